"""The client side of an AMQP 0-9-1 connection as a sans-IO state machine.

Feed received bytes to :meth:`Connection.receive_data`, then drain :meth:`Connection.next_event`.  Commands
(``basic_publish``, ``queue_declare``...) return the bytes to write.  Replies the protocol requires of us
(``start-ok``, ``tune-ok``, ``close-ok``, ``flow-ok``...) are produced by the core itself and wait in
:meth:`Connection.data_to_send`; every command's return value starts with whatever was still waiting there,
so writing command results in order always keeps the wire in order.

The core never reads a clock: heartbeat deadlines are computed from timestamps the driver passes in.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from ._channel import AWAIT_HEADER, DELIVER, GET_OK, RETURN, Channel
from ._commands import Commands
from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode
from ._events import (
    REPLY_EVENTS,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionUnblocked,
    ConsumerCancelled,
    Event,
    Heartbeat,
)
from ._fields import FieldValue
from ._frames import (
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    FrameReader,
    encode_frame,
    encode_publish,
)
from ._properties import BasicProperties
from ._spec import (
    METHODS_BY_NAME,
    decode_basic_ack,
    decode_basic_deliver,
    decode_method,
    encode_basic_ack,
    encode_method,
)
from ._state import (
    CHANNEL_COMMANDS,
    CHANNEL_DISCARDING,
    CHANNEL_INCOMING,
    CONNECTION_COMMANDS,
    CONNECTION_DISCARDING,
    CONNECTION_INCOMING,
    TRACKED_REPLIES,
    ChannelState,
    ConnectionState,
)

__all__ = ["Connection"]

_DELIVER_ID = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_ACK_ID = b"\x00\x3c\x00\x50"  # class 60, method 80 (ack)
_OPEN = ChannelState.OPEN
_CLOSING = ChannelState.CLOSING

#: Largest message body accepted by default (RabbitMQ's own hard ceiling is 512 MiB).
DEFAULT_MAX_BODY_SIZE = 512 * 1024 * 1024

_DEFAULT_CAPABILITIES: dict[str, FieldValue] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class Connection(Commands):
    """Client side of one AMQP 0-9-1 connection, with no I/O.

    Typical driver loop::

        conn = Connection("guest", "guest", "/")
        sock.sendall(conn.initiate())
        while True:
            conn.receive_data(sock.recv(65536), now=monotonic())
            sock.sendall(conn.data_to_send())
            while (event := conn.next_event()) is not None:
                handle(event)

    ``heartbeat``: ``None`` accepts the server's proposal, ``0`` disables heartbeats, ``n`` asks for ``n``
    seconds (the lower of the two non-zero values wins).  ``frame_max`` and ``channel_max`` are upper bounds;
    the negotiated values are the lower of ours and the server's (0 from the server means "no limit").
    ``max_body_size`` bounds the size of one incoming message, so a peer cannot make us buffer without limit.
    """

    def __init__(
        self,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        *,
        heartbeat: int | None = None,
        frame_max: int = 131072,
        channel_max: int = 2047,
        client_properties: Mapping[str, FieldValue] | None = None,
        auth_mechanism: Literal["PLAIN", "EXTERNAL"] = "PLAIN",
        locale: str = "en_US",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if not FRAME_MIN_SIZE <= frame_max <= 0xFFFFFFFF:
            raise LocalProtocolError(
                f"frame_max must be between {FRAME_MIN_SIZE} and 2**32-1, got {frame_max}"
            )
        if not 1 <= channel_max <= 0xFFFF:
            raise LocalProtocolError(f"channel_max must be between 1 and 65535, got {channel_max}")
        if heartbeat is not None and not 0 <= heartbeat <= 0xFFFF:
            raise LocalProtocolError(f"heartbeat must be between 0 and 65535 seconds, got {heartbeat}")
        if auth_mechanism not in ("PLAIN", "EXTERNAL"):
            raise LocalProtocolError(f"unsupported auth mechanism {auth_mechanism!r} (PLAIN or EXTERNAL)")
        self._username = username
        self._password = password
        self._vhost = vhost
        self._want_heartbeat = heartbeat
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        self._mechanism = auth_mechanism
        self._locale = locale
        self._max_body_size = max_body_size
        self._client_properties = _merge_client_properties(client_properties)

        self._state = ConnectionState.INIT
        self._reader = FrameReader(frame_max)
        self._events: deque[Event] = deque()
        self._pending: list[bytes] = []
        self._channels: dict[int, Channel] = {}
        self._next_channel = 1
        self._error: RemoteProtocolError | None = None
        self._close_reason: tuple[int, str, int, int] = (200, "", 0, 0)

        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat_interval = 0
        self.server_properties: dict[str, FieldValue] = {}
        self._last_sent: float | None = None
        self._last_received: float | None = None

    # -- introspection --------------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is ConnectionState.OPEN

    def channel_state(self, channel: int) -> ChannelState:
        """State of a channel; ``CLOSED`` for ids not in use."""
        ch = self._channels.get(channel)
        return ChannelState.CLOSED if ch is None else ch.state

    @property
    def open_channels(self) -> tuple[int, ...]:
        return tuple(ch.id for ch in self._channels.values() if ch.state is _OPEN)

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held back because they do not yet form a complete frame (< one ``frame_max``)."""
        return self._reader.buffered

    # -- input ----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Process bytes read from the transport; ``b""`` signals end of stream.

        Complete frames are parsed at once (only a partial frame is buffered) and their events queued for
        :meth:`next_event`.  If the bytes break the protocol, the events before the fault are still queued,
        the connection becomes ``FAILED`` and :meth:`next_event` raises :class:`RemoteProtocolError` once
        they are drained.  ``now`` (any monotonic clock, seconds) records when data arrived, for
        :meth:`peer_timed_out`.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state is ConnectionState.INIT:
            raise LocalProtocolError("call initiate() and send its bytes before receiving data")
        if now is not None:
            self._last_received = now
        if not data:
            self._eof()
            return
        if state is ConnectionState.CLOSED:
            return  # the peer may still flush bytes after close-ok; nothing in them matters now
        frames = self._reader.feed(data if type(data) is bytes else bytes(data))
        channels = self._channels  # channels exist only while the connection is OPEN
        events = self._events
        try:
            for frame_type, channel, payload in frames:
                if frame_type == 1:  # method
                    if channel:
                        self._channel_method(channel, payload)
                    else:
                        self._connection_method(payload)
                        if self._state is ConnectionState.CLOSED:
                            return
                    continue
                ch = channels.get(channel)
                if ch is None or ch.state is _CLOSING or frame_type == FRAME_HEARTBEAT:
                    self._stray_frame(frame_type, channel, payload)
                    continue
                if frame_type == 3:  # body
                    event = ch.content_body(payload)
                else:  # content header
                    event = ch.content_header(payload, self._max_body_size)
                if event is not None:
                    events.append(event)
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
            self._fail(RemoteProtocolError(f"malformed frame: {exc}", ReplyCode.FRAME_ERROR))
            return
        if self._reader.error is not None:
            self._fail(self._reader.error)

    def _stray_frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        """A non-method frame outside an open channel: heartbeat, or content to discard or refuse."""
        if frame_type == FRAME_HEARTBEAT:
            if channel or payload:
                raise RemoteProtocolError("heartbeat frame with a channel or payload", ReplyCode.FRAME_ERROR)
            if self._state not in CONNECTION_DISCARDING:
                self._events.append(Heartbeat())
            return
        ch = self._channels.get(channel)
        if (ch is not None and ch.state is _CLOSING) or self._state in CONNECTION_DISCARDING:
            return  # we are closing: the spec says to discard what arrives meanwhile
        what = "content header" if frame_type == FRAME_HEADER else "content body"
        raise RemoteProtocolError(f"{what} on channel {channel}, which is not open", ReplyCode.CHANNEL_ERROR)

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more data is needed.

        Raises the :class:`RemoteProtocolError` that failed the connection once the events received before
        the fault have been returned.
        """
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def events(self) -> Iterator[Event]:
        """Iterate over the queued events (see :meth:`next_event`)."""
        while (event := self.next_event()) is not None:
            yield event

    def data_to_send(self) -> bytes:
        """Bytes the core produced on its own (handshake replies, ``close-ok``, ``flow-ok``); clears them."""
        if not self._pending:
            return b""
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    # -- heartbeats -----------------------------------------------------------------------------------------

    def note_sent(self, now: float) -> None:
        """Record that bytes were written to the transport at ``now``."""
        self._last_sent = now

    def note_received(self, now: float) -> None:
        """Record that bytes arrived at ``now`` (same as passing ``now`` to :meth:`receive_data`)."""
        self._last_received = now

    def next_heartbeat_deadline(self) -> float | None:
        """When a heartbeat must be sent if nothing else is: half an interval after the last write."""
        if not self.heartbeat_interval or self._last_sent is None:
            return None
        return self._last_sent + self.heartbeat_interval / 2

    def needs_heartbeat(self, now: float) -> bool:
        deadline = self.next_heartbeat_deadline()
        return deadline is not None and now >= deadline

    def peer_deadline(self) -> float | None:
        """When the peer counts as dead: two heartbeat intervals after the last byte received."""
        if not self.heartbeat_interval or self._last_received is None:
            return None
        return self._last_received + 2 * self.heartbeat_interval

    def peer_timed_out(self, now: float) -> bool:
        deadline = self.peer_deadline()
        return deadline is not None and now > deadline

    def heartbeat(self) -> bytes:
        """A heartbeat frame (allowed once tuning is done)."""
        self._connection_command("heartbeat")
        return self._with_pending(HEARTBEAT_FRAME)

    # -- connection commands --------------------------------------------------------------------------------

    def initiate(self) -> bytes:
        """The protocol header that opens the conversation; the server answers with ``connection.start``."""
        self._connection_command("protocol-header")
        return PROTOCOL_HEADER

    def close(
        self, reply_code: int = 200, reply_text: str = "", class_id: int = 0, method_id: int = 0
    ) -> bytes:
        """Start closing the connection; :class:`ConnectionClosed` (``by_peer=False``) follows the close-ok.

        From now on incoming deliveries are discarded (the broker requeues unacked messages).
        """
        data = self._method(0, "connection.close", (reply_code, reply_text, class_id, method_id))
        self._connection_command("connection.close")
        self._close_reason = (reply_code, reply_text, class_id, method_id)
        self._channels.clear()  # what arrives for them until close-ok is discarded
        return self._with_pending(data)

    # -- channel commands -----------------------------------------------------------------------------------

    def open_channel(self, channel_id: int | None = None) -> tuple[int, bytes]:
        """Allocate a channel id and return ``(channel_id, bytes)``; :class:`ChannelOpened` follows."""
        if (self._state, "channel.open") not in CONNECTION_COMMANDS:
            raise LocalProtocolError(f"cannot open a channel while the connection is {self._state}")
        if channel_id is None:
            channel_id = self._free_channel_id()
        elif not 1 <= channel_id <= self.channel_max:
            raise LocalProtocolError(f"channel id {channel_id} out of range 1-{self.channel_max}")
        elif channel_id in self._channels:
            raise LocalProtocolError(f"channel {channel_id} is already in use")
        data = self._method(channel_id, "channel.open", ("",))
        self._channels[channel_id] = Channel(channel_id)
        return channel_id, self._with_pending(data)

    def close_channel(
        self, channel: int, reply_code: int = 200, reply_text: str = "", class_id: int = 0, method_id: int = 0
    ) -> bytes:
        """Start closing a channel; :class:`ChannelClosed` (``by_peer=False``) follows its close-ok.

        Deliveries that arrive meanwhile are discarded; the broker requeues the channel's unacked messages.
        """
        ch = self._channel_command(channel, "channel.close")
        data = self._method(channel, "channel.close", (reply_code, reply_text, class_id, method_id))
        ch.state = _CLOSING
        ch.expected.clear()
        ch.reset_content()
        return self._with_pending(data)

    def basic_publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        immediate: bool = False,
    ) -> tuple[int | None, bytes]:
        """Publish one message; return ``(sequence_number, bytes)``.

        ``sequence_number`` is the publisher-confirm delivery tag the broker will ack or nack (see
        :class:`Confirmed`) when the channel is in confirm mode, else ``None``.  The body is split into frames
        of at most ``frame_max`` bytes.
        """
        ch = self._channels.get(channel)
        if ch is None or ch.state is not _OPEN or self._state is not ConnectionState.OPEN:
            self._channel_command(channel, "basic.publish")  # raises with a precise message
            raise AssertionError("unreachable")  # pragma: no cover
        data = encode_publish(
            channel, exchange, routing_key, body, properties, mandatory, immediate, self.frame_max
        )
        seq = None
        if ch.confirm:
            seq = ch.next_seq
            ch.next_seq = seq + 1
        if self._pending:
            data = self._with_pending(data)
        return seq, data

    def basic_ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
        """Acknowledge a delivery (with ``multiple``, every unacked one up to ``delivery_tag``)."""
        ch = self._channels.get(channel)
        if ch is None or ch.state is not _OPEN or self._state is not ConnectionState.OPEN:
            self._channel_command(channel, "basic.ack")
        payload = encode_basic_ack(delivery_tag, multiple)
        return self._with_pending(encode_frame(FRAME_METHOD, channel, payload, self.frame_max))

    def confirm_select(self, channel: int, *, nowait: bool = False) -> bytes:
        """Put the channel in publisher-confirm mode; publishes from now on get sequence numbers 1, 2, ...

        :class:`ConfirmSelectOk` follows unless ``nowait``.
        """
        data = self._request(channel, "confirm.select", (nowait,), nowait)
        self._channels[channel].confirm = True
        return data

    # -- command plumbing -----------------------------------------------------------------------------------

    def _connection_command(self, command: str) -> None:
        next_state = CONNECTION_COMMANDS.get((self._state, command))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {command} while the connection is {self._state}")
        self._state = next_state

    def _channel_command(self, channel: int, command: str) -> Channel:
        if self._state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send {command}: the connection is {self._state}")
        ch = self._channels.get(channel)
        if ch is None:
            if not 1 <= channel <= self.channel_max:
                raise LocalProtocolError(f"channel id {channel} out of range 1-{self.channel_max}")
            raise LocalProtocolError(f"cannot send {command}: channel {channel} is not open")
        next_state = CHANNEL_COMMANDS.get((ch.state, command))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {command}: channel {channel} is {ch.state}")
        return ch

    def _request(self, channel: int, name: str, args: tuple[Any, ...], nowait: bool = False) -> bytes:
        ch = self._channel_command(channel, name)
        data = self._method(channel, name, args)
        replies = METHODS_BY_NAME[name].replies
        if replies and not nowait:
            ch.expected.append(replies)
        return self._with_pending(data)

    def _method(self, channel: int, name: str, args: tuple[Any, ...]) -> bytes:
        payload = encode_method(METHODS_BY_NAME[name], args)
        return encode_frame(FRAME_METHOD, channel, payload, self.frame_max)

    def _with_pending(self, data: bytes) -> bytes:
        if not self._pending:
            return data
        self._pending.append(data)
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    def _reply(self, channel: int, name: str, args: tuple[Any, ...]) -> None:
        self._pending.append(self._method(channel, name, args))

    def _free_channel_id(self) -> int:
        # Rotate through ids rather than reusing the lowest: a just-closed id may still have frames in flight.
        limit = self.channel_max
        candidate = self._next_channel
        for _ in range(limit):
            if candidate > limit:
                candidate = 1
            if candidate not in self._channels:
                self._next_channel = candidate + 1
                return candidate
            candidate += 1
        raise LocalProtocolError(f"all {limit} channels are in use")

    # -- incoming: connection level -------------------------------------------------------------------------

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._state = ConnectionState.FAILED
        self._error = exc
        self._channels.clear()

    def _eof(self) -> None:
        state = self._state
        if state is ConnectionState.CLOSED:
            return
        if state is ConnectionState.CLOSING:  # the broker dropped the link instead of sending close-ok
            self._state = ConnectionState.CLOSED
            self._events.append(ConnectionClosed(*self._close_reason, by_peer=False))
            return
        if state is ConnectionState.AWAIT_TUNE:
            self._fail(
                RemoteProtocolError(
                    "the server closed the connection during authentication (bad credentials?)",
                    ReplyCode.ACCESS_REFUSED,
                )
            )
            return
        self._fail(
            RemoteProtocolError(
                f"the server closed the connection (state {state})", ReplyCode.CONNECTION_FORCED
            )
        )

    def _connection_method(self, payload: bytes) -> None:
        method, args = decode_method(payload)
        name = method.name
        next_state = CONNECTION_INCOMING.get((self._state, name))
        if next_state is None:
            if self._state in CONNECTION_DISCARDING:
                return
            raise RemoteProtocolError(
                f"unexpected {name} on channel 0 while the connection is {self._state}",
                ReplyCode.UNEXPECTED_FRAME,
            )
        self._state = next_state
        _CONNECTION_HANDLERS[name](self, args)

    def _on_start(self, args: tuple[Any, ...]) -> None:
        major, minor, server_properties, mechanisms, _locales = args
        if (major, minor) != (0, 9):
            raise RemoteProtocolError(
                f"server speaks AMQP {major}-{minor}, not 0-9-1", ReplyCode.NOT_IMPLEMENTED
            )
        offered = mechanisms.decode("utf-8", "replace").split()
        if self._mechanism not in offered:
            raise RemoteProtocolError(
                f"server offers auth mechanisms {offered}, not {self._mechanism}", ReplyCode.ACCESS_REFUSED
            )
        self.server_properties = server_properties
        if self._mechanism == "PLAIN":
            response = b"\x00" + self._username.encode() + b"\x00" + self._password.encode()
        else:
            response = b""
        self._reply(
            0, "connection.start-ok", (self._client_properties, self._mechanism, response, self._locale)
        )

    def _on_tune(self, args: tuple[Any, ...]) -> None:
        server_channel_max, server_frame_max, server_heartbeat = args
        channel_max = _lower_nonzero(self._want_channel_max, server_channel_max)
        frame_max = _lower_nonzero(self._want_frame_max, server_frame_max)
        if frame_max < FRAME_MIN_SIZE:
            raise RemoteProtocolError(
                f"server proposed frame_max {frame_max} < {FRAME_MIN_SIZE}", ReplyCode.SYNTAX_ERROR
            )
        want = self._want_heartbeat
        if want is None:
            heartbeat = server_heartbeat
        elif want == 0:
            heartbeat = 0
        else:
            heartbeat = _lower_nonzero(want, server_heartbeat)
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat_interval = heartbeat
        self._reader.max_frame = frame_max
        self._reply(0, "connection.tune-ok", (channel_max, frame_max, heartbeat))
        self._reply(0, "connection.open", (self._vhost, "", False))

    def _on_open_ok(self, args: tuple[Any, ...]) -> None:
        opened = ConnectionOpened(
            self.frame_max, self.channel_max, self.heartbeat_interval, self.server_properties
        )
        self._events.append(opened)

    def _on_close(self, args: tuple[Any, ...]) -> None:
        self._reply(0, "connection.close-ok", ())
        self._channels.clear()
        code, text, class_id, method_id = args
        self._events.append(ConnectionClosed(code, text, class_id, method_id, by_peer=True))

    def _on_close_ok(self, args: tuple[Any, ...]) -> None:
        self._channels.clear()
        self._events.append(ConnectionClosed(*self._close_reason, by_peer=False))

    def _on_blocked(self, args: tuple[Any, ...]) -> None:
        self._events.append(ConnectionBlocked(args[0]))

    def _on_unblocked(self, args: tuple[Any, ...]) -> None:
        self._events.append(ConnectionUnblocked())

    # -- incoming: channel level ----------------------------------------------------------------------------

    def _channel_method(self, channel: int, payload: bytes) -> None:
        ch = self._channels.get(channel)
        if ch is None:
            if self._state in CONNECTION_DISCARDING:
                return
            raise RemoteProtocolError(
                f"method frame on channel {channel}, which is not open", ReplyCode.CHANNEL_ERROR
            )
        if ch.awaiting:
            raise RemoteProtocolError(
                f"method frame on channel {channel} in the middle of a message's content",
                ReplyCode.UNEXPECTED_FRAME,
            )
        if ch.state is _OPEN:
            # hot paths, equivalent to the table entries (OPEN, basic.deliver/basic.ack) -> OPEN
            key = payload[:4]
            if key == _DELIVER_ID:
                ch.content_args = decode_basic_deliver(payload)
                ch.content_kind = DELIVER
                ch.awaiting = AWAIT_HEADER
                return
            if key == _ACK_ID:
                tag, multiple = decode_basic_ack(payload)
                confirmed = ch.settle(tag, multiple, True)
                if confirmed is not None:
                    self._events.append(confirmed)
                return
        method, args = decode_method(payload)
        name = method.name
        next_state = CHANNEL_INCOMING.get((ch.state, name))
        if next_state is None:
            if ch.state in CHANNEL_DISCARDING:
                return
            raise RemoteProtocolError(
                f"unexpected {name} on channel {channel}, which is {ch.state}", ReplyCode.UNEXPECTED_FRAME
            )
        if name in TRACKED_REPLIES:
            if not ch.expected or name not in ch.expected[0]:
                owed = ch.expected[0] if ch.expected else "nothing"
                raise RemoteProtocolError(
                    f"unsolicited {name} on channel {channel} (awaiting {owed})", ReplyCode.UNEXPECTED_FRAME
                )
            ch.expected.popleft()
        previous = ch.state
        ch.state = next_state
        if next_state is ChannelState.CLOSED:
            del self._channels[channel]
        handler = _CHANNEL_HANDLERS.get(name)
        if handler is not None:
            handler(self, ch, previous, args)
        else:
            event_type, with_args = REPLY_EVENTS[name]
            self._events.append(event_type(channel, *args) if with_args else event_type(channel))

    def _on_channel_open_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._events.append(ChannelOpened(ch.id))

    def _on_channel_close(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._reply(ch.id, "channel.close-ok", ())
        if previous is _CLOSING:
            ch.close_reason = args  # report the server's reason once our close is acknowledged
            return
        code, text, class_id, method_id = args
        self._events.append(ChannelClosed(ch.id, code, text, class_id, method_id, by_peer=True))

    def _on_channel_close_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        if ch.close_reason is not None:
            self._events.append(ChannelClosed(ch.id, *ch.close_reason, by_peer=True))
        else:
            self._events.append(ChannelClosed(ch.id, 200, "", 0, 0, by_peer=False))

    def _on_channel_flow(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._reply(ch.id, "channel.flow-ok", args)
        self._events.append(ChannelFlow(ch.id, args[0]))

    def _on_basic_cancel(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        consumer_tag, nowait = args
        if not nowait:
            self._reply(ch.id, "basic.cancel-ok", (consumer_tag,))
        self._events.append(ConsumerCancelled(ch.id, consumer_tag))

    def _on_get_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(GET_OK, args)

    def _on_return(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(RETURN, args)

    def _on_deliver(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(DELIVER, args)  # normally taken by the hot path in _channel_method

    def _on_confirm(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        confirmed = ch.settle(args[0], args[1], len(args) == 2)  # basic.ack has 2 fields, basic.nack 3
        if confirmed is not None:
            self._events.append(confirmed)


_ConnectionHandler = Callable[[Connection, tuple[Any, ...]], None]
_ChannelHandler = Callable[[Connection, Channel, ChannelState, tuple[Any, ...]], None]

_CONNECTION_HANDLERS: dict[str, _ConnectionHandler] = {
    "connection.start": Connection._on_start,
    "connection.tune": Connection._on_tune,
    "connection.open-ok": Connection._on_open_ok,
    "connection.close": Connection._on_close,
    "connection.close-ok": Connection._on_close_ok,
    "connection.blocked": Connection._on_blocked,
    "connection.unblocked": Connection._on_unblocked,
}

_CHANNEL_HANDLERS: dict[str, _ChannelHandler] = {
    "channel.open-ok": Connection._on_channel_open_ok,
    "channel.close": Connection._on_channel_close,
    "channel.close-ok": Connection._on_channel_close_ok,
    "channel.flow": Connection._on_channel_flow,
    "basic.cancel": Connection._on_basic_cancel,
    "basic.deliver": Connection._on_deliver,
    "basic.get-ok": Connection._on_get_ok,
    "basic.return": Connection._on_return,
    "basic.ack": Connection._on_confirm,
    "basic.nack": Connection._on_confirm,
}


def _lower_nonzero(ours: int, theirs: int) -> int:
    """Negotiate a limit where 0 means "no limit": the lower of the non-zero values."""
    if not theirs:
        return ours
    if not ours:
        return theirs
    return min(ours, theirs)


def _merge_client_properties(extra: Mapping[str, FieldValue] | None) -> dict[str, FieldValue]:
    props: dict[str, FieldValue] = {
        "product": "kelp",
        "platform": f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        "capabilities": dict(_DEFAULT_CAPABILITIES),
    }
    if extra:
        for key, value in extra.items():
            if key == "capabilities" and isinstance(value, Mapping):
                props["capabilities"] = {**_DEFAULT_CAPABILITIES, **value}
            else:
                props[key] = value
    return props
