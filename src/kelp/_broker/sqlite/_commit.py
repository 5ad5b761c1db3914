"""Publishing into the sqlite store: persistent messages committed before publish returns (alone: one
autocommitted INSERT), transient messages and acks buffered for a group commit (see :mod:`._tuning`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import TypeVar

from kelp._broker.core.store import Claimer
from kelp._broker.sqlite import _buffer, _checkpoint, _delayed, _ops, _tuning
from kelp._broker.sqlite._liveness import Liveness
from kelp._broker.sqlite._state import _Busy
from kelp._broker.sqlite._watch import is_full
from kelp._envelope import Envelope
from kelp.exceptions import (
    KelpError,
    MessageNacked,
)

logger = logging.getLogger("kelp.transport.sqlite")

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class GroupCommit(Liveness):
    """Buffered publishes, acks and releases, and their commits."""

    # --- publishing ---------------------------------------------------------------------------------------

    def should_flush(self) -> bool:
        """True when the publishing thread should commit the buffer itself: a full batch while other
        processes share the file (see _tuning.BATCH), else when the flusher fell behind."""
        if not self._shared:
            return self._pending.count >= _tuning.HIGH_WATER
        first = self._first_pending
        return self._pending.count >= _tuning.BATCH or (
            first is not None and time.monotonic() - first >= _tuning.MAX_LINGER
        )

    def send(self, envelopes: Sequence[Envelope], wait: bool, confirm: bool = False) -> int | None:
        """Publish: route and encode the envelopes into the buffer, in order.

        A persistent message (any message, with ``confirm``) is committed before its publish returns:
        with ``wait`` this commits the buffer (the publishes of other threads included) and returns 0;
        without, it returns a *ticket* for :meth:`commit`, so that the asyncio face commits the publishes
        of concurrent tasks together.
        Transient messages are left to the group commit (0), or - when the publishing thread should
        commit the buffer itself (:meth:`should_flush`) - committed now, or a ticket without ``wait``.

        Returns None, having done nothing, when an envelope needs the broker's answer now: mandatory,
        naming an exchange this process does not know, or reaching a queue that may refuse it
        (``x-overflow: reject-publish``); :meth:`publish` takes those.
        """
        if self._lost is not None or self._writer is None:
            self._check()
        if self._full:
            return None  # while the disk is full, each publish commits in publish(): a failure is raised
        topo = self._topo
        if wait and len(envelopes) == 1 and not self._pending.count and envelopes[0].due is not None:
            held = _buffer.lean_held_row(topo, envelopes[0], confirm)
            if held is not None:
                with self._lock:
                    stored = not self._pending.count and self._insert_row(held, _delayed.HOLD_IF_CURRENT)
                if stored:
                    self._held(held[0])
                    return 0
                if stored is None:
                    return None
        if wait and len(envelopes) == 1 and not self._pending.count:
            row = _buffer.lean_row(topo, envelopes[0], confirm)
            if row is not None:
                with self._lock:
                    stored = not self._pending.count and self._insert_row(row)
                if stored:
                    if self._uncounted >= _tuning.FOLD_EVERY:
                        self._count_ready()
                    return 0
                # not stored: the disk is full (publish() reports it, with nothing stored), or the
                # topology changed since this process routed (publish() routes again), or the file is busy
                return None
        found = _buffer.stage(topo, envelopes, time.time())
        if found is None:
            return None
        staged, durable = found
        durable = durable or confirm
        # Routed on this process's snapshot of the topology: if another process changed it since,
        # publish() routes again on the current one, so that a message reaches every queue declared and
        # bound before it was published. Checked at every persistent or unroutable publish; a transient
        # one may be routed on a snapshot up to FRESH_TOPOLOGY seconds old (a check costs a quarter of
        # its publish).
        if self._topology_stale(0.0 if durable or not staged else _tuning.FRESH_TOPOLOGY):
            return None
        if not staged:
            return 0  # unroutable and not mandatory: dropped, as a broker drops it
        with self._buffer_lock:
            if not durable:
                self._last_buffer = now = time.monotonic()
                if self._first_pending is None:
                    self._first_pending = now
                    self._wakeup.set()
                elif (
                    self._pending.count < _tuning.BATCH <= self._pending.count + len(staged)
                    and not self._shared
                ):
                    self._wakeup.set()
            self._pending.push(topo.version, staged)
            self._staged = ticket = self._staged + 1
        if durable:
            if wait:
                self.commit(ticket)
                return 0
            return ticket
        if self._waiting:
            self._wake(_buffer.queues(staged))
        if self.should_flush():
            if wait:
                self.flush()
                return 0
            return ticket
        return 0

    def raise_refused(self) -> None:
        """Raise MessageNacked for the buffered publishes that a queue refused at commit since the last
        call (each reported once, to whichever connection of the process publishes or flushes next)."""
        if not self._refused:
            return
        with self._buffer_lock:
            refused, self._refused = self._refused, []
        if refused:
            queues = sorted({name for _, name in refused})
            raise MessageNacked(
                f"queue(s) {queues} full (x-overflow reject-publish): {len(refused)} message(s) published "
                "earlier not enqueued there",
                envelopes=[envelope for envelope, _ in refused],
            )

    def committed(self, ticket: int) -> bool:
        """Whether the publishes up to ``ticket`` (from :meth:`send`) are committed."""
        return self._committed >= ticket

    def commit(self, ticket: int, blocking: bool = True) -> bool:
        """Commit the buffer unless the publishes up to ``ticket`` are committed already; True when they
        are. Without ``blocking``, only when that is quick - the writer free, no fsync on commit
        (synchronous=normal), at most ``INLINE_MAX`` rows, no other process writing - and False otherwise,
        having changed nothing (the asyncio face then commits in a worker thread)."""
        if self._committed >= ticket:
            return True
        if not blocking and self.options.synchronous != "normal":
            return False
        if not self._lock.acquire(blocking):
            return False
        try:
            if self._committed >= ticket:
                return True
            if self._commit_one():
                if self._uncounted >= _tuning.FOLD_EVERY:
                    self._count_ready()
                return True
            if blocking:
                self._run(_ops.nothing)
                return True
            if self._pending.count > _tuning.INLINE_MAX:
                return False
            try:
                self._run(_ops.nothing, once=True)
            except _Busy:
                return False
            return True
        finally:
            self._lock.release()

    def _commit_one(self) -> bool:
        """Commit a buffer that holds one ready row by a single INSERT that SQLite commits on its own - no
        BEGIN, no COMMIT, no topology read: the usual persistent publish. Call holding the writer lock.
        False, having changed nothing, when the buffer holds anything else, the topology changed since the
        row was routed, or another process is writing: the general path (:meth:`_run`) stores it then."""
        pending = self._pending
        if pending.count != 1:
            return False
        with self._buffer_lock:
            if pending.count != 1 or pending.segments[0][1] is None:
                return False
            segments = pending.take()
            first, self._first_pending = self._first_pending, None
            staged = self._staged
        version, shape, entries = segments[0]
        assert shape is not None
        if not self._insert_row((*shape, entries[0], version)):
            with self._buffer_lock:
                pending.restore(segments)
                if first is not None and self._first_pending is None:
                    self._first_pending = first
            return False
        self._committed = staged
        return True

    def _held(self, due: float) -> None:
        """A delayed message due at ``due`` was stored by the lean path (as _finish does for a Tx)."""
        if due < self._next_due:
            self._next_due = due
            if self._waiting:
                self._wake_everyone()

    def _insert_row(self, row: _ops.Row | _delayed.HeldRow, sql: str = _ops.INSERT_IF_CURRENT) -> bool | None:
        """Store one ready row (its shape, body and the topology version it was routed at) by one
        autocommitted INSERT (see :meth:`_commit_one`) - or, with ``sql`` HOLD_IF_CURRENT, one delayed
        row; False, having stored nothing, if that cannot be done now, and None when the disk is full.
        Hold the writer lock, with nothing buffered before it."""
        cursor = self._inserter
        if cursor is None or self._lost is not None:
            return False
        self._check_file()  # never commit into a file deleted or replaced under us
        try:
            if cursor.execute(sql, row).rowcount != 1:
                return False
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and is_full(exc):
                self._full = True  # send() hands this publish to publish(), which reports it unstored
                return None
            return False  # busy, or worse: the general path retries or reports it
        self._last_commit = now = time.monotonic()
        if now - self._checkpointed_at >= _checkpoint.EVERY:
            self._wakeup.set()  # the flusher checkpoints the WAL
        if sql is _ops.INSERT_IF_CURRENT:  # a ready row: counted in arrears, its consumers woken
            self._uncounted += 1
            if self._waiting:
                self._wake({str(row[0])})
        return True

    def _count_ready(self) -> None:
        """Bring the ready counts up to date (any write transaction does, first thing). The publish that
        calls this is committed already: a busy or failing file is left to the next operation."""
        self._uncounted = 0
        try:
            self._run(_ops.nothing, once=True)
        except (_Busy, KelpError):
            pass

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Route and store the envelopes, committed before returning; return the unroutable mandatory
        ones. Raises MessageNacked (after storing the rest) when a full ``reject-publish`` queue refused
        one."""
        returned, refused = self._run(lambda tx: _ops.publish(tx, envelopes))
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted({name for _, name in refused})} full (x-overflow reject-publish): "
                "message not enqueued there",
                envelopes=list(dict.fromkeys(envelope for envelope, _ in refused)),
            )
        self.raise_refused()
        return returned

    def _settle_later(self, into: list[tuple[int, int]], pairs: list[tuple[int, int]]) -> None:
        """Buffer acks or releases (``into``) of (message id, owner connection) for the next commit."""
        with self._buffer_lock:
            if self._first_settle is None:
                self._first_settle = time.monotonic()
                self._wakeup.set()
            into += pairs
