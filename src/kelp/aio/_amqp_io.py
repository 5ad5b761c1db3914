"""asyncio I/O for :class:`kelp.amqp.Connection`: an :class:`asyncio.BufferedProtocol` on the running loop.

The twin of :mod:`kelp._amqp_io`, with the same interface; ``kelp.aio.transport.amqp`` is written
against it. Everything runs on the event loop thread, so no lock is needed: ``data_received`` feeds the core,
hands each event to ``on_event``, writes what the core queued (``close-ok``, ``flow-ok``) and wakes every
waiter by resolving the current "something happened" future. Writes made during one turn of the loop are
coalesced into one ``send`` (acks, transient publishes, commands). Heartbeats are one ``loop.call_later``
timer that re-arms itself for the next deadline. The transport's write buffer limits are 0: asyncio pauses
writing whenever the kernel did not take every byte, so ``send`` waits while bytes are left in the process
(back-pressure), and ``send(..., drain=True)`` (a persistent publish) writes at once and returns once the
kernel holds the bytes: the socket keeper (:mod:`kelp._keeper`) holds a duplicate of the socket, so they
leave even if this process is killed right after (without a keeper, it waits until the kernel has sent
them). Concurrent publishes still share the pipeline: none waits for another's confirm.

Reads land in one buffer per connection (``get_buffer``): a plain Protocol's transport would ``recv`` up to
256 KiB into a new bytes object for every read, allocating the whole size each time, which costs several
times the system call when a small frame came.

Errors are not mapped here: ``on_lost`` receives the raw ``OSError`` / protocol error / ``TimeoutError``
once, and every later call raises it again.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable

from kelp import _keeper
from kelp._amqp_io import _READ_SIZE, limit_unsent, readable_bytes, unsent_bytes
from kelp.amqp import Connection, Event, ProtocolError

__all__ = ["Driver"]

#: Queued bytes are written at once past this size, else on the loop's next turn.
_FLUSH_AT = 256 * 1024


class Driver(asyncio.BufferedProtocol):
    """Drives one core over an asyncio transport (see the module docstring)."""

    def __init__(
        self,
        core: Connection,
        on_event: Callable[[Event], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._core = core
        self._on_event = on_event
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._sent: asyncio.Future[None] | None = None  # resolved once nothing is left unsent
        self._probe: int | None = None  # a duplicate of the socket's descriptor, watched for writability
        # releases the socket from the keeper (kelp._keeper); None: no keeper
        self._kept: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._buffer = memoryview(bytearray(_READ_SIZE))  # what each read lands in (see the docstring)
        #: The error that ended the connection (None while it lives).
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float | None,
    ) -> None:
        """Open the connection (TLS when ``ssl_context``) and send the protocol header."""
        loop = self._loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            await loop.create_connection(
                lambda: self,
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context is not None else None,
            )

    async def close(self) -> None:
        """Drop the connection at once (the caller already said ``connection.close``)."""
        self._flush()
        self._fail(ConnectionAbortedError("the connection was closed by this client"), report=False)

    # -- asyncio.BufferedProtocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=0)  # pause_writing whenever bytes are left in the process
        sock = transport.get_extra_info("socket")
        if sock is not None:
            limit_unsent(sock)
            self._kept = _keeper.keep_for(self, sock.fileno())
        self._write(self._core.initiate())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        core = self._core
        try:
            core.receive_data(data, time.monotonic())
            for event in core.events():
                self._on_event(event)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if self.error is None:
            pending = core.data_to_send()
            if pending:
                self._write(pending)
            if self._timer is None and core.heartbeat_interval:
                self._on_timer()
        self._wake()

    def eof_received(self) -> bool:
        self.data_received(b"")
        self._fail(ConnectionResetError("the broker closed the TCP connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the connection to the broker was lost"))
        writable = self._writable
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._on_drained()

    def pause_writing(self) -> None:
        if self._writable is None and self._loop is not None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._on_drained()

    def _on_drained(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- writing --------------------------------------------------------------------------------------------

    async def send(self, produce: Callable[[], bytes], drain: bool = False) -> None:
        """Write what ``produce()`` returns; wait while earlier bytes are still in the write buffer.

        With ``drain``, the bytes (and any queued before them) are written at once, and this waits until
        the kernel has them (with no socket keeper, until it has sent them); without, they leave with the
        other writes of this turn of the loop.
        """
        if self.error is not None:
            raise self.error
        self._write(produce())
        if drain:
            self._flush()
            if self._writable is not None:
                drained = self._drained
                if drained is None:
                    drained = self._drained = asyncio.get_running_loop().create_future()
                await asyncio.shield(drained)
            if self._kept is None:  # no keeper holds the socket: see kelp._amqp_io.Driver.send
                await self._wait_sent()
                sock = self._socket()
                if sock is not None and readable_bytes(sock):
                    # let the loop read what the broker sent by now (kelp._amqp_io.Driver._read_available)
                    await self.wait_for(lambda: self.error is not None or not readable_bytes(sock), 0.05)
        else:
            writable = self._writable
            if writable is None:
                return
            await asyncio.shield(writable)
        if self.error is not None:
            raise self.error

    async def _wait_sent(self) -> None:
        """Wait until the kernel has sent what we wrote (see :func:`kelp._amqp_io.limit_unsent`).

        Only waits when the broker reads slower than we write. The transport owns the socket's events, so
        a duplicate descriptor of the socket is watched: with ``TCP_NOTSENT_LOWAT`` of 1 it polls writable
        exactly when nothing is left unsent.
        """
        sock = self._socket()
        if sock is None or not unsent_bytes(sock):
            return
        sent = self._sent
        if sent is None:
            loop = asyncio.get_running_loop()
            if self._probe is None:
                self._probe = os.dup(sock.fileno())
            sent = self._sent = loop.create_future()
            loop.add_writer(self._probe, self._on_sent)
        await asyncio.shield(sent)
        if self.error is not None:
            raise self.error

    def _socket(self) -> socket.socket | None:
        transport = self._transport
        return transport.get_extra_info("socket") if transport is not None else None

    def _on_sent(self) -> None:
        sock = self._socket()
        if sock is not None and self.error is None and unsent_bytes(sock):
            return
        self._stop_probe(close=False)

    def _stop_probe(self, close: bool) -> None:
        if self._sent is not None and self._loop is not None and self._probe is not None:
            self._loop.remove_writer(self._probe)
        sent, self._sent = self._sent, None
        if sent is not None and not sent.done():
            sent.set_result(None)
        if close and self._probe is not None:
            os.close(self._probe)
            self._probe = None

    def _write(self, data: bytes) -> None:
        """Queue ``data``; it goes out on the loop's next turn, or at once past ``_FLUSH_AT`` bytes.

        Everything written during one turn of the loop (a burst of publishes, 100 gathered tasks) leaves in
        one ``send`` instead of one per message; order is kept because every write goes through here.
        """
        if self._transport is None or self.error is not None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= _FLUSH_AT:
            self._flush()
        elif not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        transport = self._transport
        if not out or transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        transport.write(data)
        self._core.note_sent(time.monotonic())
        if self._writable is None:  # the kernel took every byte
            self._on_drained()

    # -- waiting --------------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Wait until ``predicate()`` is true (re-checked after every batch of events); False on timeout."""
        if predicate():
            return True
        loop = self._loop or asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            changed = self._changed
            if changed is None:
                changed = self._changed = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(changed)
            except TimeoutError:
                return bool(predicate())
            if predicate():
                return True

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    # -- heartbeats and failure -----------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self.error is not None:
            return
        core = self._core
        now = time.monotonic()
        if core.peer_timed_out(now):
            self._fail(
                TimeoutError(
                    f"no data from the broker for two heartbeat intervals "
                    f"({2 * core.heartbeat_interval} s): it is unreachable or stalled"
                )
            )
            return
        if core.needs_heartbeat(now) and core.is_open:
            self._write(core.heartbeat())
        deadlines = [d for d in (core.next_heartbeat_deadline(), core.peer_deadline()) if d is not None]
        if deadlines and self._loop is not None:
            delay = max(0.0, min(deadlines) - time.monotonic()) + 0.001
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _fail(self, exc: BaseException, report: bool = True) -> None:
        if self.error is None:
            self.error = exc
            if report:
                self._on_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_probe(close=True)
        transport, self._transport = self._transport, None
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and self._kept is not None:
                # the keeper's duplicate would keep the connection open: end it here
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            transport.abort()
        kept, self._kept = self._kept, None
        if kept is not None:
            kept()
        self._on_drained()
        self._wake()
