# Generated from src/kelp/aio/transport/_redis_pipe.py by scripts/unasync.py; do not edit.
"""The pipeline of a ``redis://`` connection: commands written at once, replies read later, in order.

Every script call and ack of a connection goes through one Redis connection (a :class:`Wire`), so Redis
runs them in the order they were written: an operation reads its own writes without waiting for the
replies of the publishes before it. Each written command has a :class:`Slot` in a FIFO; a reply settles
the oldest slot.

* A *publish* slot is the outbox: its envelopes were written (they left the process) and are owed a
  confirm. Its reply goes to ``on_publish`` (the transport records refusals, to be raised by the next
  publish, flush or close). :meth:`Pipe.unconfirmed` lists them, in publish order.
* A *call* slot belongs to someone waiting for its reply (:meth:`Pipe.wait`).
* An *ignore* slot (acks, ``SCRIPT LOAD``) only has to be read past.

Replies are read when someone needs one (a call, :meth:`make_room` when the outbox is full, a flush), and
opportunistically by :meth:`settle_ready` when they have already arrived. ``NOSCRIPT`` (Redis lost its
scripts: ``SCRIPT FLUSH``) resends the command after loading the script again; nothing of it ran.
A failed write or read breaks the pipe for good (``broken``): the slots it holds are never answered, and
the caller reconnects and publishes :meth:`unconfirmed` again.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from kelp._backend import Lock, monotonic
from kelp._broker.redis.wire import ThreadWire as Wire
from kelp._envelope import Envelope

__all__ = ["CALL", "IGNORE", "PUBLISH", "Pipe", "Slot"]

logger = logging.getLogger("kelp.transport.redis")

PUBLISH, CALL, IGNORE = 0, 1, 2
#: Replies left unread before a publish reads those that have already arrived: a socket whose replies
#: are read keeps the kernel's receive buffer small.
READ_EVERY = 64


def _script_missing(reply: Any) -> bool:
    """Whether Redis refused a call because it lost the script (SCRIPT FLUSH, FUNCTION FLUSH)."""
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("Function not found")
    )


class Slot:
    """One written command awaiting its reply."""

    __slots__ = ("done", "envelopes", "kind", "packed", "size", "value", "wire_size")

    def __init__(self, kind: int, envelopes: list[Envelope] | None = None, size: int = 0) -> None:
        self.kind = kind
        self.envelopes = envelopes or []
        self.size = size
        self.packed: list[bytes] = []
        self.wire_size = 0
        self.done = False
        self.value: Any = None


class Pipe:
    def __init__(
        self,
        wire: Wire,
        script_load: list[bytes],
        on_publish: Callable[[Slot, Any], None],
        max_unconfirmed: int,
        max_unconfirmed_bytes: int,
        max_in_flight: int,
    ) -> None:
        self.wire = wire
        #: The command that loads the script again when Redis lost it.
        self.script_load = script_load
        self._on_publish = on_publish
        self.max_unconfirmed = max_unconfirmed
        self.max_unconfirmed_bytes = max_unconfirmed_bytes
        self.max_in_flight = max_in_flight
        #: Held around a write (and whatever must be written in order before it).
        self.write_lock = Lock()
        self._read_lock = Lock()
        self._slots: collections.deque[Slot] = collections.deque()
        self.count = 0  # envelopes in the outbox
        self.nbytes = 0  # and their bodies' bytes
        self.in_flight = 0  # bytes written whose reply is unread
        self._unread = 0
        #: The error that broke the pipe, if one did: it is never used again.
        self.broken: BaseException | None = None

    def unconfirmed(self) -> list[Envelope]:
        return [envelope for slot in list(self._slots) if slot.kind == PUBLISH for envelope in slot.envelopes]

    def _add(self, slot: Slot) -> None:
        self._slots.append(slot)
        self.in_flight += slot.wire_size
        if slot.kind == PUBLISH:
            self.count += len(slot.envelopes)
            self.nbytes += slot.size

    def _forget(self, slot: Slot) -> None:
        self.in_flight -= slot.wire_size
        if slot.kind == PUBLISH:
            self.count -= len(slot.envelopes)
            self.nbytes -= slot.size

    def write(self, commands: list[tuple[list[bytes], Slot]]) -> None:
        """Write commands (the caller holds ``write_lock``); returns once they have left the process. On
        failure the pipe is broken and these commands' slots are dropped (the caller gets the error), the
        earlier ones stay unconfirmed."""
        if self.broken is not None:
            raise self.broken
        chunks: list[bytes] = []
        for packed, slot in commands:
            if slot.kind != IGNORE:
                slot.packed = packed
            slot.wire_size = sum(len(chunk) for chunk in packed)
            self._add(slot)
            chunks += packed
        try:
            self.wire.write(chunks)
        except BaseException as exc:
            if not isinstance(exc, Exception) and self.wire.committed:
                raise  # cancelled once the bytes were handed over: they are sent, and owed a reply
            self.broken = exc
            for _, slot in commands:
                if slot in self._slots:
                    self._slots.remove(slot)
                    self._forget(slot)
            raise
        self._unread += len(commands)

    def wait(self, slot: Slot, deadline: float | None = None) -> Any:
        """Read replies until ``slot`` has its own; return it (an error reply is returned, not raised).
        Raises TimeoutError at ``deadline`` (monotonic), leaving the pipe usable."""
        with self._read_lock:
            while not slot.done:
                self._read_one(deadline)
        return slot.value

    def wait_all(self, deadline: float | None = None) -> None:
        """Read every reply owed for what was written so far."""
        if self._slots:
            self.wait(self._slots[-1], deadline)

    def _full(self, count: int, nbytes: int, wire_size: int) -> bool:
        return (
            self.count + count > self.max_unconfirmed
            or self.nbytes + nbytes > self.max_unconfirmed_bytes
            or self.in_flight + wire_size > self.max_in_flight
        )

    def make_room(self, count: int, nbytes: int, wire_size: int) -> None:
        """Back-pressure: read replies until ``count`` more envelopes of ``nbytes`` (``wire_size`` bytes
        of commands) fit in the outbox and in flight."""
        if not self._full(count, nbytes, wire_size):
            return
        with self._read_lock:
            while self._slots and self._full(count, nbytes, wire_size):
                self._read_one(None)

    def settle_ready(self) -> None:
        """Read the replies that have already arrived, without waiting for more (now and then only)."""
        if self._unread < READ_EVERY or self._read_lock.locked() or self.broken is not None:
            return
        self._unread = 0
        with self._read_lock:
            while self._slots and self.broken is None and self.wire.ready():
                self._read_one(None)

    def _read_one(self, deadline: float | None) -> None:
        if self.broken is not None:
            raise self.broken
        timeout = None if deadline is None else max(0.0, deadline - monotonic())
        try:
            reply = self.wire.read(timeout)
        except TimeoutError:
            if deadline is None:
                self.broken = ConnectionError("redis did not answer within the socket timeout")
            raise
        except BaseException as exc:
            if isinstance(exc, Exception) or not self.wire.is_open:
                self.broken = exc
            raise  # a cancelled read (kelp) resumes where it stopped
        slot = self._slots.popleft()
        self._forget(slot)
        if slot.kind != IGNORE and _script_missing(reply):
            # Nothing of the command ran: load the script again and send the command once more.
            with self.write_lock:
                self.write([(self.script_load, Slot(IGNORE)), (slot.packed, slot)])
            return
        slot.done = True
        if slot.kind == PUBLISH:
            slot.packed = []
            self._on_publish(slot, reply)
        elif slot.kind == CALL:
            slot.value = reply
        elif isinstance(reply, ResponseError):
            logger.warning("kelp: redis refused an ack: %s", reply)
