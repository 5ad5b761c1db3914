# Generated from src/kelp/aio/transport/_redis_pipe.py by scripts/unasync.py; do not edit.
"""The pipeline of a ``redis://`` connection: commands written at once, in order, on one Redis connection.

Every script call and ack of a connection goes through one Redis connection (a :class:`Wire`), so Redis
runs them in the order they were written: an operation reads its own writes.

*Quiet* commands — pipelined publishes and acks — run with ``CLIENT REPLY OFF``: Redis answers nothing,
so it never writes to the socket while it works through them. That is what makes a written publish
survive its process being killed: Redis frees a client as soon as writing a reply to it fails, dropping
the commands it had not read yet, but a client that is owed no reply is read to the end. So nothing quiet
is ever written behind a reply still owed (:meth:`Pipe.send` first reads it).

A *publish* slot holds the envelopes of one quiet publish: the outbox (:meth:`Pipe.unconfirmed`). They are
confirmed by a *confirm* call (``CLIENT REPLY ON`` then the script's ``confirm``), written before any
command that replies, when the outbox is full (:meth:`make_room`) and on a flush (:meth:`wait_all`): it
answers how many quiet publishes ran since the previous one and what they refused, which goes to
``on_confirm``. Fewer than were written (the script was flushed from Redis, a write refused for memory)
sends that window again after loading the script (at-least-once). A *call* slot belongs to someone waiting
for its reply (:meth:`wait`); an *ignore* slot only has to be read past.

A failed write or read breaks the pipe for good (``broken``): the caller reconnects and publishes
:meth:`unconfirmed` again.
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

__all__ = ["CALL", "CONFIRM", "IGNORE", "PUBLISH", "Pipe", "Slot"]

logger = logging.getLogger("kelp.transport.redis")

PUBLISH, CALL, IGNORE, CONFIRM = 0, 1, 2, 3
#: Bytes of quiet publishes after which a confirm is written with them: the next publish waits for its
#: answer, so the outbox that a lost connection leaves to publish again stays about this small.
CHECKPOINT = 128 * 1024

Commands = list[tuple[list[bytes], "Slot | None"]]


def _script_missing(reply: Any) -> bool:
    """Whether Redis refused a call because it lost the script (SCRIPT FLUSH, FUNCTION FLUSH)."""
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, ResponseError) and str(reply).startswith("Function not found")
    )


class Slot:
    """One written command: a quiet publish awaiting its confirm, or a command awaiting its reply."""

    __slots__ = ("done", "envelopes", "kind", "packed", "size", "value", "window")

    def __init__(self, kind: int, envelopes: list[Envelope] | None = None, size: int = 0) -> None:
        self.kind = kind
        self.envelopes = envelopes or []
        self.size = size
        self.packed: list[bytes] = []
        self.done = False
        self.value: Any = None
        self.window: list[Slot] = []  # a confirm's publishes


class Pipe:
    def __init__(
        self,
        wire: Wire,
        script_load: list[bytes],
        confirm: list[bytes],
        on_confirm: Callable[[list[Slot], Any], None],
        max_unconfirmed: int,
        max_unconfirmed_bytes: int,
    ) -> None:
        self.wire = wire
        #: The command that loads the script again when Redis lost it.
        self.script_load = script_load
        #: The script call that confirms the quiet publishes since the previous one.
        self.confirm = confirm
        self._on_confirm = on_confirm
        self.max_unconfirmed = max_unconfirmed
        self.max_unconfirmed_bytes = max_unconfirmed_bytes
        self._reply_off = wire.pack("CLIENT", "REPLY", "OFF")
        self._reply_on = wire.pack("CLIENT", "REPLY", "ON")
        self.write_lock = Lock()
        self._read_lock = Lock()
        self._replies: collections.deque[Slot] = collections.deque()  # owed a reply, in order
        self._window: list[Slot] = []  # quiet publishes since the last confirm written
        self._quiet = False  # CLIENT REPLY OFF is in force
        self._since_confirm = 0  # bytes of quiet publishes written since the last confirm
        self.count = 0  # envelopes in the outbox
        self.nbytes = 0  # and their bodies' bytes
        #: The error that broke the pipe, if one did: it is never used again.
        self.broken: BaseException | None = None

    def unconfirmed(self) -> list[Envelope]:
        slots = [s for confirm in list(self._replies) if confirm.kind == CONFIRM for s in confirm.window]
        return [envelope for slot in slots + self._window for envelope in slot.envelopes]

    def send(
        self, make_quiet: Callable[[], Commands], calls: list[tuple[list[bytes], Slot]], confirm: bool = False
    ) -> None:
        """Write the quiet commands ``make_quiet()`` returns (called under the write lock, so what it takes
        is written in order), then ``calls``, preceded by a confirm when publishes one (or, with
        ``confirm``, whenever they do). Returns once the bytes have left the process."""
        while True:
            if self._replies:  # nothing quiet behind an owed reply: read it first
                self.wait(self._replies[-1])
            with self.write_lock:
                if self._replies:
                    continue
                self._write(make_quiet(), calls, confirm)
                return

    def _write(self, quiet: Commands, calls: list[tuple[list[bytes], Slot]], confirm: bool) -> None:
        if self.broken is not None:
            raise self.broken
        chunks: list[bytes] = []
        own: list[Slot] = []
        if quiet:
            if not self._quiet:
                chunks += self._reply_off
                self._quiet = True
            for packed, slot in quiet:
                chunks += packed
                if slot is not None:
                    self._since_confirm += sum(len(chunk) for chunk in packed)
                    slot.packed = packed
                    self._window.append(slot)
                    self.count += len(slot.envelopes)
                    self.nbytes += slot.size
                    own.append(slot)
        if self._since_confirm >= CHECKPOINT:
            confirm = True
        if calls or (confirm and self._window):
            if self._quiet:
                chunks += self._reply_on
                self._replies.append(Slot(IGNORE))
                self._quiet = False
            if self._window:
                self._since_confirm = 0
                check = Slot(CONFIRM)
                check.window, self._window = self._window, []
                chunks += self.confirm
                self._replies.append(check)
            for packed, slot in calls:
                slot.packed = packed
                chunks += packed
                self._replies.append(slot)
                own.append(slot)
        if not chunks:
            return
        try:
            self.wire.write(chunks)
        except BaseException as exc:
            if not isinstance(exc, Exception) and self.wire.committed:
                raise  # cancelled once the bytes were handed over: they are sent
            self.broken = exc
            self._drop(own)  # the caller gets the error: its own messages are not owed a confirm too
            raise

    def _drop(self, slots: list[Slot]) -> None:
        gone = {id(slot) for slot in slots}
        for slot in slots:
            if slot.kind == PUBLISH:
                self.count -= len(slot.envelopes)
                self.nbytes -= slot.size
        self._window = [slot for slot in self._window if id(slot) not in gone]
        for confirm in self._replies:
            confirm.window = [slot for slot in confirm.window if id(slot) not in gone]
        self._replies = collections.deque(slot for slot in self._replies if id(slot) not in gone)

    def wait(self, slot: Slot, deadline: float | None = None) -> Any:
        """Read replies until ``slot`` has its own; return it (an error reply is returned, not raised).
        Raises TimeoutError at ``deadline`` (monotonic), leaving the pipe usable."""
        with self._read_lock:
            while not slot.done:
                self._read_one(deadline)
        return slot.value

    def wait_all(self, deadline: float | None = None) -> None:
        """Confirm every publish written so far and read every reply owed."""
        self.send(list, [], confirm=True)
        if self._replies:
            self.wait(self._replies[-1], deadline)

    def make_room(self, count: int, nbytes: int) -> None:
        """Back-pressure: confirm publishes until ``count`` more envelopes of ``nbytes`` fit in the outbox."""
        while (
            self.count + count > self.max_unconfirmed or self.nbytes + nbytes > self.max_unconfirmed_bytes
        ) and (self.count):
            self.wait_all()

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
        slot = self._replies.popleft()
        if slot.kind == CONFIRM:
            self._confirmed(slot, reply)
        elif slot.kind == CALL and _script_missing(reply):
            # Nothing of the command ran: load the script again and send the command once more.
            with self.write_lock:
                self._write([], [(self.script_load, Slot(IGNORE)), (slot.packed, slot)], False)
        elif slot.kind == CALL:
            slot.value = reply
            slot.done = True
        else:
            if isinstance(reply, ResponseError):
                logger.warning("kelp: redis refused a command of the pipe: %s", reply)
            slot.done = True

    def _confirmed(self, slot: Slot, reply: Any) -> None:
        window = slot.window
        if isinstance(reply, Exception):
            if not _script_missing(reply):
                self.broken = ConnectionError(f"redis refused to confirm publishes: {reply}")
                raise self.broken
            # The script was flushed from Redis: the confirm did not run and the count goes on. Load the
            # script and ask again.
            self._rewrite(slot, window, resend=False)
            return
        ran = min(int(reply[0]), len(window))
        done, rest = window[:ran], window[ran:]
        for publish in done:
            self.count -= len(publish.envelopes)
            self.nbytes -= publish.size
            publish.done = True
        self._on_confirm(done, reply)
        if rest:
            # The publishes after the script was lost never ran (they come in order): send them again.
            logger.warning("kelp: redis lost the script: sending %d pipelined publishes again", len(rest))
            self._rewrite(slot, rest, resend=True)
            return
        slot.done = True

    def _rewrite(self, slot: Slot, window: list[Slot], resend: bool) -> None:
        """Load the script, write ``window`` again (quiet) when ``resend``, then ``slot``'s confirm for it."""
        slot.window = window
        chunks = list(self.script_load)
        if resend:
            chunks += self._reply_off
            for publish in window:
                chunks += publish.packed
            chunks += self._reply_on
        chunks += self.confirm
        with self.write_lock:
            self._replies += [Slot(IGNORE)] + ([Slot(IGNORE)] if resend else []) + [slot]
            try:
                self.wire.write(chunks)
            except BaseException as exc:
                self.broken = exc
                raise
