"""A scripted AMQP 0-9-1 server on a loopback socket, for testing kelp's I/O drivers without RabbitMQ.

It speaks with frames built by kelp's own sans-IO codecs (``amqp_kit``), answers the handshake and the
synchronous commands a client sends (channel.open, confirm.select, qos, declares, consume...) the way a
broker would, records every frame the client sent, and lets a test inject anything at any moment: a
``connection.close``, a frame cut into single bytes, a malformed frame, confirms in any order, a return,
``connection.blocked``, or a socket cut in the middle of a frame. One client connection per broker.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from amqp_kit import BIG, content, method, start

from kelp.amqp import BasicProperties
from kelp.amqp._frames import FRAME_BODY, FRAME_HEADER, FRAME_METHOD, PROTOCOL_HEADER, FrameReader
from kelp.amqp._properties import decode_content_header
from kelp.amqp._spec import decode_method

#: A handler for one method the client sent: ``(channel, args) -> bytes to answer with`` (b"": no answer).
Handler = Callable[[int, tuple[Any, ...]], bytes]

HEARTBEAT = bytes([8, 0, 0, 0, 0, 0, 0, 0xCE])


class Published:
    """A message the client published: channel, confirm tag (0 outside confirm mode), method args, body."""

    def __init__(self, channel: int, tag: int, args: tuple[Any, ...]) -> None:
        self.channel = channel
        self.tag = tag
        self.args = args
        self.exchange: str = args[1]
        self.routing_key: str = args[2]
        self.mandatory: bool = args[3]
        self.size = 0
        self.properties: BasicProperties | None = None
        self.body = b""


class FakeBroker:
    """One scripted broker. ``url()`` to connect; ``received`` lists ``(channel, name, args)`` frames."""

    def __init__(self, heartbeat: int = 0, auto_confirm: bool = True) -> None:
        self.heartbeat = heartbeat
        self.auto_confirm = auto_confirm
        #: Replies that replace the automatic ones (AUTO), by method name.
        self.handlers: dict[str, Handler] = {"connection.start-ok": self._tune}
        self.received: list[tuple[int, str, tuple[Any, ...]]] = []
        self.published: list[Published] = []
        #: Called with each message the client published, from the server thread; its bytes are sent
        #: back at once (instead of the automatic ack).
        self.on_publish: Callable[[Published], bytes] | None = None
        self.closed = False  # the client's socket reached end of file, or we cut it
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sock: socket.socket | None = None
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._confirming: set[int] = set()
        self._next_tag: dict[int, int] = {}
        self._content: Published | None = None
        self._thread = threading.Thread(target=self._run, name="fake-amqp-broker", daemon=True)
        self._thread.start()

    def url(self, **query: object) -> str:
        params = "&".join(f"{key}={value}" for key, value in query.items())
        return f"amqp://guest:guest@127.0.0.1:{self.port}//" + (f"?{params}" if params else "")

    # -- what the test does -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` to the client as it is."""
        self._wait_connected()
        assert self._sock is not None
        with self._send_lock:
            self._sock.sendall(data)

    def send_in_pieces(self, data: bytes, size: int = 1, pause: float = 0.002) -> None:
        """Write ``data`` in ``size``-byte writes with a pause between them, so that the client's reads
        cut frames (TCP_NODELAY is on: every write is its own segment)."""
        for at in range(0, len(data), size):
            self.send(data[at : at + size])
            time.sleep(pause)

    def cut(self) -> None:
        """Drop the TCP connection at once (no connection.close)."""
        self._wait_connected()
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def methods(self, name: str) -> list[tuple[int, tuple[Any, ...]]]:
        with self._cond:
            return [(channel, args) for channel, got, args in self.received if got == name]

    def wait_method(
        self, name: str, count: int = 1, timeout: float = 5.0
    ) -> list[tuple[int, tuple[Any, ...]]]:
        """Wait until the client sent ``count`` ``name`` methods; return them all."""
        assert self.wait_for(lambda: len(self.methods(name)) >= count, timeout), (
            f"the client did not send {count} {name}; it sent {[got for _, got, _ in self.received]}"
        )
        return self.methods(name)

    def wait_published(self, count: int, timeout: float = 5.0) -> list[Published]:
        assert self.wait_for(lambda: len(self.published) >= count, timeout), (
            f"{len(self.published)} of {count} messages arrived"
        )
        return self.published

    def ack(self, channel: int, tag: int, multiple: bool = False) -> None:
        self.send(method(channel, "basic.ack", tag, multiple))

    def nack(self, channel: int, tag: int, multiple: bool = False) -> None:
        self.send(method(channel, "basic.nack", tag, multiple, False))

    def deliver(
        self, channel: int, consumer_tag: str, tag: int, body: bytes, routing_key: str = "q"
    ) -> bytes:
        """The frames of a basic.deliver (not sent: the test decides how)."""
        props = BasicProperties(content_type="text/plain", delivery_mode=2)
        return content(channel, "basic.deliver", (consumer_tag, tag, False, "", routing_key), body, props)

    def close(self) -> None:
        self.cut()
        self._listener.close()
        self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> FakeBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the server thread ----------------------------------------------------------------------------------

    def _tune(self, channel: int, args: tuple[Any, ...]) -> bytes:
        return method(0, "connection.tune", 2047, 131072, self.heartbeat)

    def _wait_connected(self) -> None:
        assert self.wait_for(lambda: self._sock is not None), "no client connected"

    def _run(self) -> None:
        self._listener.settimeout(30)
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            self._sock = sock
            self._cond.notify_all()
        header = b""
        while len(header) < 8:
            chunk = sock.recv(8 - len(header))
            if not chunk:
                return self._eof()
            header += chunk
        assert header == PROTOCOL_HEADER, header
        self.send(start())
        reader = FrameReader(BIG)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return self._eof()
            for frame_type, channel, payload in reader.feed(data):
                self._on_frame(frame_type, channel, payload)
            assert reader.error is None, reader.error

    def _eof(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _on_frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        if frame_type == FRAME_METHOD:
            spec, args = decode_method(payload)
            with self._cond:
                self.received.append((channel, spec.name, args))
                self._cond.notify_all()
            if spec.name == "basic.publish":
                tag = 0
                if channel in self._confirming:
                    tag = self._next_tag[channel] = self._next_tag.get(channel, 0) + 1
                self._content = Published(channel, tag, args)
                return
            handler = self.handlers.get(spec.name) or AUTO.get(spec.name)
            if handler is not None:
                reply = handler(channel, args)
                if reply:
                    self.send(reply)
            if spec.name == "confirm.select":
                self._confirming.add(channel)
            return
        if frame_type == FRAME_HEADER:
            assert self._content is not None
            _, self._content.size, self._content.properties = decode_content_header(payload)
            if self._content.size == 0:
                self._published()
            return
        if frame_type == FRAME_BODY:
            assert self._content is not None
            self._content.body += payload
            if len(self._content.body) >= self._content.size:
                self._published()
            return
        with self._cond:
            self.received.append((channel, "heartbeat", ()))
            self._cond.notify_all()

    def _published(self) -> None:
        message, self._content = self._content, None
        assert message is not None
        with self._cond:
            self.published.append(message)
            self._cond.notify_all()
        if self.on_publish is not None:
            self.send(self.on_publish(message))
        elif message.tag and self.auto_confirm:
            self.ack(message.channel, message.tag)


def _reply(name: str, *args: Any) -> Handler:
    return lambda channel, _: method(channel, name, *args)


AUTO: dict[str, Handler] = {
    "connection.open": _reply("connection.open-ok", ""),
    "channel.open": _reply("channel.open-ok", b""),
    "channel.close": _reply("channel.close-ok"),
    "connection.close": _reply("connection.close-ok"),
    "confirm.select": lambda channel, args: b"" if args[0] else method(channel, "confirm.select-ok"),
    "basic.qos": _reply("basic.qos-ok"),
    "exchange.declare": lambda channel, args: b"" if args[6] else method(channel, "exchange.declare-ok"),
    "queue.declare": lambda channel, args: method(channel, "queue.declare-ok", args[1] or "amq.gen-1", 0, 0),
    "queue.bind": _reply("queue.bind-ok"),
    "basic.consume": lambda channel, args: method(channel, "basic.consume-ok", args[2] or "ctag-1"),
    "basic.cancel": lambda channel, args: b"" if args[1] else method(channel, "basic.cancel-ok", args[0]),
}
