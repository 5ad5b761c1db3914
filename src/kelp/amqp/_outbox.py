"""The publisher-confirm outbox of one connection: what was published and not yet settled by the broker.

Sans-IO bookkeeping for pipelined confirms. Each published message is recorded under its channel and
publish sequence number (the delivery tag the broker will ack or nack); :class:`Confirmed` events settle
them. A publish that waits for its own confirms passes a :class:`Waiter`, which counts them down; the
refusals of publishes that did not wait are kept in :attr:`Outbox.refused` until someone reports them.
Nothing here blocks: the transport decides who waits, and for how long.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["Outbox", "Waiter"]

T = TypeVar("T")


class Waiter(Generic[T]):
    """One publish call waiting for its own confirms: how many are owed, which were refused."""

    __slots__ = ("error", "nacked", "remaining", "returned")

    def __init__(self) -> None:
        self.remaining = 0
        self.nacked: list[T] = []
        #: Mandatory messages the broker returned as unroutable (filled in by the transport).
        self.returned: list[T] = []
        #: Set when the answer can no longer come (channel or connection closed).
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.remaining == 0 or self.error is not None


class Outbox(Generic[T]):
    """Unsettled publishes of one connection, per channel and sequence number, in publish order."""

    __slots__ = ("_channels", "_order", "bytes", "closures", "count", "refused")

    def __init__(self) -> None:
        # channel -> sequence number -> (publish order, message, size, waiter or None)
        self._channels: dict[int, dict[int, tuple[int, T, int, Waiter[T] | None]]] = {}
        self._order = 0  # publish order across channels
        self.count = 0
        self.bytes = 0
        #: Messages the broker refused whose publish did not wait: reported by the next publish or flush.
        self.refused: list[T] = []
        #: Why some of :attr:`refused` were given up (a channel the broker closed), for the report.
        self.closures: list[BaseException] = []

    def add(self, channel: int, seq: int, message: T, size: int, waiter: Waiter[T] | None) -> None:
        """Record a message just encoded for sending on ``channel`` under sequence number ``seq``."""
        self._order += 1
        self._channels.setdefault(channel, {})[seq] = (self._order, message, size, waiter)
        self.count += 1
        self.bytes += size
        if waiter is not None:
            waiter.remaining += 1

    def settle(self, channel: int, seqs: Iterable[int], ack: bool) -> None:
        """The broker acked (``ack``) or nacked these sequence numbers: take them out of the outbox."""
        pending = self._channels.get(channel)
        if not pending:
            return
        for seq in seqs:
            entry = pending.pop(seq, None)
            if entry is None:
                continue
            _, message, size, waiter = entry
            self.count -= 1
            self.bytes -= size
            if waiter is not None:
                waiter.remaining -= 1
                if not ack:
                    waiter.nacked.append(message)
            elif not ack:
                self.refused.append(message)

    def forget(self, channel: int, seqs: Iterable[int]) -> list[T]:
        """Take out messages whose publish raised (the caller owns them again); return them."""
        pending = self._channels.get(channel)
        out: list[T] = []
        if pending:
            for seq in seqs:
                entry = pending.pop(seq, None)
                if entry is not None:
                    self.count -= 1
                    self.bytes -= entry[2]
                    out.append(entry[1])
        return out

    def close_channel(self, channel: int, error: BaseException) -> int:
        """The broker closed ``channel``: its unsettled messages will never be confirmed.

        Waiting publishes get ``error``; the others become refusals reported with ``error`` as the reason.
        Returns how many messages were affected (0: nobody will hear of ``error`` through the outbox).
        """
        pending = self._channels.pop(channel, None)
        if not pending:
            return 0
        given_up = False
        for _, message, size, waiter in pending.values():
            self.count -= 1
            self.bytes -= size
            if waiter is not None:
                if waiter.error is None:
                    waiter.error = error
            else:
                self.refused.append(message)
                given_up = True
        if given_up:
            self.closures.append(error)
        return len(pending)

    def fail_waiters(self, error: BaseException) -> None:
        """The connection is lost: every waiting publish fails; the messages stay (see :meth:`messages`)."""
        for pending in self._channels.values():
            for entry in pending.values():
                waiter = entry[3]
                if waiter is not None and waiter.error is None:
                    waiter.error = error

    def take_refused(self) -> tuple[list[T], list[BaseException]]:
        """The refusals not yet reported, and why channels were given up; both are then forgotten."""
        refused, self.refused = self.refused, []
        closures, self.closures = self.closures, []
        return refused, closures

    def messages(self) -> list[T]:
        """Every unsettled message, in publish order (across channels)."""
        entries = [entry for pending in self._channels.values() for entry in pending.values()]
        entries.sort(key=lambda entry: entry[0])
        return [entry[1] for entry in entries]
