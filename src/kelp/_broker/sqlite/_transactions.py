"""Write transactions of the sqlite store: ``BEGIN IMMEDIATE``, retried with bounded back-off while another
process writes (``busy_timeout``), each first applying what this process buffered (publishes, acks,
releases); native SQLite failures become kelp exceptions here.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Container
from typing import TypeVar

from kelp._broker.core.errors import ErrorMap
from kelp._broker.core.store import Claimer
from kelp._broker.sqlite import _buffer, _checkpoint, _ops, _repair
from kelp._broker.sqlite._state import StoreState, _Busy, _Gone, _is_busy
from kelp._broker.sqlite._watch import full_error, is_full
from kelp._envelope import Envelope
from kelp.exceptions import (
    ChannelError,
    InconsistencyError,
    KelpError,
    OperationalError,
    UsageError,
)

logger = logging.getLogger("kelp.transport.sqlite")

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


#: SQLite's failures as kelp exceptions (busy is retried before it comes to this; see Transactions._run).
ERRORS = ErrorMap(
    (
        sqlite3.OperationalError,
        lambda e: isinstance(e, sqlite3.Error) and is_full(e),
        lambda e, path: full_error(path),
    ),
    (sqlite3.OperationalError, None, lambda exc, path: OperationalError(f"sqlite error on {path}: {exc}")),
    (
        sqlite3.DatabaseError,
        None,
        lambda exc, path: InconsistencyError(f"the kelp database {path} is damaged: {exc}"),
    ),
)


def _failure(exc: sqlite3.Error, path: str) -> KelpError:
    mapped = ERRORS.translate(exc, path)
    assert mapped is not None  # the table names DatabaseError, which every error caught here is
    return mapped


class _EveryQueue:
    def __contains__(self, name: object) -> bool:
        return True


_EVERY_QUEUE = _EveryQueue()


class Transactions(StoreState):
    """Runs operations in write transactions."""

    # --- transactions -------------------------------------------------------------------------------------

    def _check(self) -> sqlite3.Connection:
        if self._lost is not None:
            raise OperationalError(self._lost)
        writer = self._writer
        if writer is None:
            raise OperationalError(f"the sqlite store {self.path} is closed")
        return writer

    def _run(self, op: Callable[[_ops.Tx], T], plain: bool = False, once: bool = False) -> T:
        """Run ``op`` in one write transaction, after applying what this process buffered.

        Retries while another process holds the write lock, for at most ``busy_timeout`` seconds, then
        raises OperationalError (``once``: raises _Busy at once, nothing changed). A kelp error raised by
        ``op`` undoes ``op`` only; the buffer still commits.
        """
        with self._lock:
            db = self._check()
            give_up = time.monotonic() + self.options.busy_timeout
            delay = 0.0001
            repaired = False
            while True:
                try:
                    return self._attempt(db, op, plain)
                except sqlite3.OperationalError as exc:
                    self._check_file()  # a file replaced under us explains any error best
                    if is_full(exc):
                        self._full = True
                        raise _failure(exc, self.path) from None
                    if _repair.is_undecodable_text(exc) and not repaired:
                        # A message row written from outside kelp holds text that is not UTF-8: take
                        # such rows out of their queues (once), then run the operation again.
                        try:
                            self._attempt(db, _repair.repair_text, False)
                            repaired = True
                            continue
                        except sqlite3.OperationalError as again:
                            exc = again  # busy: wait below like any busy attempt, then try again
                    if not _is_busy(exc):
                        raise _failure(exc, self.path) from None
                    if once:
                        raise _Busy from None
                    if time.monotonic() >= give_up:
                        raise OperationalError(
                            f"the kelp database {self.path} stayed locked by another process for "
                            f"{self.options.busy_timeout:g}s (busy_timeout); giving up"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.005)
                except sqlite3.DatabaseError as exc:
                    self._check_file()
                    raise _failure(exc, self.path) from None

    def _attempt(self, db: sqlite3.Connection, op: Callable[[_ops.Tx], T], plain: bool) -> T:
        with self._buffer_lock:
            publishes = self._pending.take()
            acks, self._acks = self._acks, []
            releases, self._releases = self._releases, []
            self._first_pending = self._first_settle = None
            staged = self._staged
        committed = False
        refused: list[tuple[Envelope, str]] = []
        tx = _ops.Tx(self, db, time.time())
        try:
            db.execute("BEGIN IMMEDIATE")
            if not plain:
                tx.begin()
                if releases:
                    _ops.release_rows(db, releases)
                if acks:
                    _ops.ack_rows(db, acks)
                if publishes:
                    refused = _buffer.store(tx, publishes)
            tx.flush_rows()
            flush_only = op is _ops.nothing  # no savepoint then: each statement costs a GIL round trip
            if flush_only:
                result = op(tx)
            else:
                before = (tx.topo, tx.reloaded, set(tx.touched), set(tx.deleted_queues), tx.next_due)
                db.execute("SAVEPOINT op")
                try:
                    result = op(tx)
                    tx.flush_rows()
                    tx.current()
                except (ChannelError, UsageError, ValueError, TypeError, KelpError):
                    # The operation is refused: undo it alone; what was buffered still commits.
                    tx.runs.clear()
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    tx.count_ready()
                    self._check_file()
                    db.execute("COMMIT")
                    committed = True
                    self._committed = staged
                    tx.topo, tx.reloaded, tx.touched, tx.deleted_queues, tx.next_due = before
                    tx.dirty = False
                    self._finish(tx)
                    raise
                db.execute("RELEASE op")
            tx.count_ready()
            self._check_file()
            db.execute("COMMIT")
            committed = True
            self._full = False
            self._committed = staged
        finally:
            if committed and refused:
                with self._buffer_lock:
                    self._refused += refused
            if not committed:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                with self._buffer_lock:
                    self._pending.restore(publishes)
                    self._acks[:0] = acks
                    self._releases[:0] = releases
                    now = time.monotonic()
                    if self._pending.count and self._first_pending is None:
                        self._first_pending = now
                    if (self._acks or self._releases) and self._first_settle is None:
                        self._first_settle = now
        self._finish(tx)
        return result

    def _check_file(self) -> None:
        """Refuse to commit into a file that is no longer the one at the path (see _watch.py)."""
        problem = self._file.problem()
        if problem is not None:
            self._lost = problem
            logger.error("kelp: %s", problem)
            raise OperationalError(problem)

    def _finish(self, tx: _ops.Tx) -> None:
        now = time.monotonic()
        self._last_commit = now
        if now - self._checkpointed_at >= _checkpoint.EVERY:
            self._wakeup.set()  # the flusher checkpoints the WAL
        if tx.reloaded:
            self._topo = tx.topo
        if tx.loaded:  # read under the write lock: no other process changed it before this commit
            self._topo_seen = now
        listener = self.listener
        if listener is not None and (tx.deleted_queues or tx.reloaded):
            # Queues deleted here or (seen in a reloaded topology) by another process, also when it
            # declared them again since.
            registered = self._registered if tx.reloaded else None
            listener.queues_deleted(_Gone(tx.deleted_queues, tx.topo.queues, registered))
        if tx.touched:
            self._wake(tx.touched)
        if tx.next_due < self._next_due:
            self._next_due = tx.next_due
            if tx.held:  # a delayed message due before the waits in progress end: they recompute
                self._wake_everyone()

    def _registered(self) -> Container[str]:
        """The queues on which this process's connections have consumers registered (under the lock)."""
        owners = list(self._owners)
        writer = self._writer
        if not owners or writer is None:
            return set()
        marks = ",".join("?" * len(owners))
        try:
            sql = f"SELECT DISTINCT queue FROM consumers WHERE connection IN ({marks})"
            rows = writer.execute(sql, owners)
            return {row[0] for row in rows}
        except sqlite3.Error:
            return _EVERY_QUEUE  # not known now: no consumer is cancelled for it

    def flush(self) -> None:
        """Commit everything buffered (publishes, acks) now."""
        if self._pending.count or self._acks or self._releases:
            self._run(_ops.nothing)
