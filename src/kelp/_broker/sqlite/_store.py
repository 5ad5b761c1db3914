"""The engine behind ``sqlite://``: one :class:`SqliteStore` per (process, database file).

Every connection of a process to the same file shares the store, from any thread and from both faces.
The store owns a *writer* SQLite connection (all writes, serialised by ``_lock``, each a
``BEGIN IMMEDIATE`` transaction retried with bounded back-off while another process writes) and a
*reader* connection used for cheap checks that take no write lock (is there work, when is the next
deadline, did another process commit: ``PRAGMA data_version``).

Publishing. Publishes that need no answer from the broker are routed against the cached topology,
encoded and *buffered* (:mod:`._buffer`), in publish order. A persistent message is committed before its
publish returns (:meth:`SqliteStore.send`): by the publishing thread, with whatever else is buffered -
the publishes of other threads and tasks that arrived meanwhile share that commit - and, when it is alone,
by a single autocommitted INSERT. Transient messages and acks stay buffered for a group commit: the
buffer is applied, in order, at the start of the next write transaction of this process - any operation
(a persistent publish, claim, get, declare, close...), so a process always reads its own writes - or by
the flusher thread or the publishing thread (when and by whom: ``BATCH``, ``LINGER``, ``ACK_LINGER``).

The flusher thread also polls ``data_version`` while some connection waits for messages (waking it when
another process committed), refreshes this process's heartbeat, reaps dead processes (their unacked
messages are released, flagged redelivered) and checkpoints the WAL (:mod:`._checkpoint`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from kelp._broker.core.session import Session
from kelp._broker.core.store import Claimer, Item, Listener, Unacked
from kelp._broker.malformed import Malformed
from kelp._broker.sqlite import _buffer, _checkpoint, _ops
from kelp._broker.sqlite._buffer import PublishBuffer
from kelp._broker.sqlite._codec import decode
from kelp._broker.sqlite._schema import (
    connect,
    ensure_schema,
    namespace,
    process_start_time,
    process_state,
)
from kelp._broker.sqlite._topology import EMPTY, Topology
from kelp._broker.sqlite._watch import FileIdentity, full_error, is_full
from kelp._envelope import Envelope, QueueInfo
from kelp._options import seconds_option
from kelp.exceptions import (
    ChannelError,
    InconsistencyError,
    KelpError,
    MessageNacked,
    OperationalError,
    ResourceError,
    UsageError,
)

__all__ = ["SqliteStore", "StoreOptions", "store_for"]

logger = logging.getLogger("kelp.transport.sqlite")

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")

#: Buffered publishes are committed by the flusher thread this many seconds after the first one...
LINGER = 0.001
#: ...or as soon as this many wait. The flusher's inserts run in SQLite without the GIL, overlapping the
#: publishing thread's Python work. But the flusher waits for the GIL after each statement - up to the
#: 5 ms switch interval while a publisher keeps a core busy - holding the database's write lock. So when
#: other processes share the file, the publishing thread commits full batches itself, and the flusher
#: commits only once the publisher pauses, or the publisher at MAX_LINGER.
BATCH = 512
MAX_LINGER = 0.02
#: Buffered acks (and releases) are committed by the next transaction of the process - a consumer's next
#: claim, usually - or by the flusher this many seconds after the first: each commit of its own would take
#: the database's write lock from the processes that publish and consume.
ACK_LINGER = 0.05
#: Alone on the file, a buffer this long is committed by the publishing thread itself: the flusher is not
#: keeping up (under load it commits a few thousand messages at a time).
HIGH_WATER = 32 * BATCH
#: data_version polling while a connection waits: starts fast, backs off while nothing changes.
POLL_MIN = 0.0005
POLL_MAX = 0.004
HEARTBEAT_EVERY = 1.0
#: How often the flusher looks for dead processes (a pid check each: cheap), to release their unacked
#: messages: often while a consumer of this process waits for messages, so that it gets them within a
#: fraction of a second of the kill; less often otherwise.
REAP_WHILE_WAITING = 0.25
REAP_IDLE = 0.5
#: The asyncio face commits persistent publishes on the event loop's thread when that is quick: the
#: writer free, no fsync (synchronous=normal), another process not writing, at most this many rows.
INLINE_MAX = 64
#: After this many one-row INSERTs (which leave the ready counts in arrears: see _schema._READY_COUNTS)
#: a publisher brings the counts up to date itself, so that no transaction has more than a few thousand
#: rows to count, however long this process publishes alone.
FOLD_EVERY = 1024


class _Busy(Exception):
    """Another thread or process holds the write lock (a commit that was not to wait)."""


class StoreOptions:
    """Options from the URL query: ``synchronous``, ``busy_timeout`` (s), ``heartbeat`` (s)."""

    __slots__ = ("busy_timeout", "heartbeat", "synchronous")

    def __init__(self, synchronous: str = "normal", busy_timeout: float = 10.0, heartbeat: float = 30.0):
        if synchronous not in ("normal", "full"):
            raise UsageError(f"sqlite:// synchronous must be 'normal' or 'full', not {synchronous!r}")
        if busy_timeout <= 0 or heartbeat <= 0:
            raise UsageError("sqlite:// busy_timeout and heartbeat must be positive numbers of seconds")
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.heartbeat = heartbeat

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> StoreOptions:
        return cls(
            query.get("synchronous", "normal").lower(),
            seconds_option("sqlite", "busy_timeout", query.get("busy_timeout", 10.0)),
            seconds_option("sqlite", "heartbeat", query.get("heartbeat", 30.0)),
        )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class _Gone:
    """The queues a transaction deleted, or that are missing from the topology it reloaded."""

    __slots__ = ("deleted", "existing")

    def __init__(self, deleted: set[str], existing: Mapping[str, object]) -> None:
        self.deleted = deleted
        self.existing = existing

    def __contains__(self, name: object) -> bool:
        return name in self.deleted or name not in self.existing


class SqliteStore:
    """All exchanges, queues and messages of one SQLite file, as seen from this process."""

    def __init__(self, path: str, options: StoreOptions) -> None:
        self.path = path
        self.options = options
        self._lock = threading.RLock()  # the writer connection; held across a whole transaction
        self._buffer_lock = threading.Lock()
        self._reader_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        # The writer's cursor for one-row INSERTs, kept: Connection.execute makes a cursor per call.
        self._inserter: sqlite3.Cursor | None = None
        self._reader: sqlite3.Connection | None = None
        self._refs = 0
        self._pid = os.getpid()
        self._process_id: int | None = None
        self._namespace = namespace()
        self._lost: str | None = None
        self._file = FileIdentity(path)
        self._full = False  # the last commit failed for lack of space: publishes are not buffered
        self._topo: Topology = EMPTY
        self._owners: set[int] = set()  # the connections of this process (their ids)
        self.listener: Listener | None = None
        self._pending = PublishBuffer()  # publishes awaiting the group commit
        self._staged = 0  # pushes into the buffer so far: a publish's ticket is the count after its own
        self._committed = 0  # ...and how many of them are committed
        self._refused: list[tuple[Envelope, str]] = []  # buffered publishes a queue refused at commit
        self._acks: list[tuple[int, int]] = []  # (message id, owner connection)
        self._releases: list[tuple[int, int]] = []
        self._first_pending: float | None = None  # when the oldest buffered publish was buffered
        self._last_buffer = 0.0  # ...and the newest
        self._first_settle: float | None = None  # ...and the oldest buffered ack or release
        self._shared = False  # other processes have the file open (as of the last look)
        self._next_due = float("inf")  # wall-clock time of the next known TTL/expiry deadline
        self._wakeup = threading.Event()
        self._flusher: threading.Thread | None = None
        self._stopping = False
        self._checkpointer = _checkpoint.Checkpointer(path, options.synchronous)
        self._last_commit = 0.0
        self._checkpointed_at = 0.0
        self._uncounted = 0  # rows this process inserted above the ready mark (see FOLD_EVERY)
        self.session: Session[SqliteStore] = Session(self)

    # --- lifecycle ---------------------------------------------------------------------------------

    def attach(self) -> None:
        """Count one more user (a transport connection); open the database on first use."""
        with self._lock:
            if self._refs == 0:
                self._open()
            self._refs += 1

    def detach(self) -> None:
        """Count one user less; the last one flushes and closes the database (the store stays known)."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
        self._close()

    def _open(self) -> None:
        if os.getpid() != self._pid:
            raise OperationalError("a kelp sqlite store cannot be used across fork(); reconnect in the child")
        options = self.options
        writer = connect(self.path, options.synchronous, options.busy_timeout)
        try:
            reader = connect(self.path, options.synchronous, options.busy_timeout)
        except BaseException:
            writer.close()
            raise
        # The writer never waits inside SQLite: _run retries BEGIN IMMEDIATE with its own back-off.
        writer.execute("PRAGMA busy_timeout=0")
        writer.execute("PRAGMA journal_size_limit=67108864")
        # Checkpoints are the flusher's (see _checkpoint.py); a writer runs one only as a backstop.
        writer.execute(f"PRAGMA wal_autocheckpoint={4 * _checkpoint.WAL_LIMIT_PAGES}")
        self._writer, self._reader = writer, reader
        self._inserter = writer.cursor()
        self._lost = None
        self._file.remember()
        try:
            self._run(self._register, plain=True)
        except BaseException:
            self._writer = self._reader = self._inserter = None
            writer.close()
            reader.close()
            raise
        self._stopping = False
        self._flusher = threading.Thread(
            target=self._flusher_loop, name=f"kelp-sqlite-flusher {self.path}", daemon=True
        )
        self._flusher.start()

    def _register(self, tx: _ops.Tx) -> None:
        ensure_schema(tx.db, self.path, tx.now)
        tx.refresh()
        db = tx.db
        if self._process_id is not None:
            row = db.execute("SELECT 1 FROM processes WHERE id=?", (self._process_id,)).fetchone()
            if row is not None:
                return
            logger.warning("kelp: this process's registration in %s was reaped; re-registering", self.path)
        live = self._reap_dead(tx)
        self._shared = live > 0
        if not live:
            _ops.recover(tx)
        self._process_id = db.execute(
            "INSERT INTO processes (pid, start_time, namespace, heartbeat_at) VALUES (?, ?, ?, ?)",
            (self._pid, process_start_time(self._pid), self._namespace, tx.now),
        ).lastrowid

    def _close(self) -> None:
        flusher = self._flusher
        self._stopping = True
        self._wakeup.set()
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=5)
        with self._lock:
            if self._refs > 0 or self._writer is None:
                return
            try:
                if self._lost is None:
                    self.flush()
                elif self._pending.count:
                    logger.error(
                        "kelp: %d buffered publishes were not stored: %s", self._pending.count, self._lost
                    )
            except Exception:
                logger.exception("kelp: could not flush %s while closing", self.path)
            self._flusher = None
            self._checkpointer.close()
            writer, reader = self._writer, self._reader
            self._writer = self._reader = self._inserter = None
            for db in (reader, writer):
                if db is not None:
                    try:
                        db.close()
                    except sqlite3.Error:
                        pass

    def shutdown(self) -> None:
        """At interpreter exit: commit what is buffered and unregister this process."""
        with self._lock:
            if self._writer is None:
                return
            try:
                self._run(self._unregister)
            except Exception:
                logger.debug("kelp: could not unregister from %s at exit", self.path, exc_info=True)
            self._refs = 0
        self._close()

    def _unregister(self, tx: _ops.Tx) -> None:
        for connection_id in list(self._owners):
            _ops.drop_connection(tx, connection_id)
        if self._process_id is not None:
            tx.db.execute("DELETE FROM processes WHERE id=?", (self._process_id,))
        self._owners.clear()

    # --- transactions ------------------------------------------------------------------------------

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
                        raise full_error(self.path) from None
                    if _ops.is_undecodable_text(exc) and not repaired:
                        # A message row written from outside kelp holds text that is not UTF-8: take
                        # such rows out of their queues (once), then run the operation again.
                        try:
                            self._attempt(db, _ops.repair_text, False)
                            repaired = True
                            continue
                        except sqlite3.OperationalError as again:
                            exc = again  # busy: wait below like any busy attempt, then try again
                    if not _is_busy(exc):
                        raise OperationalError(f"sqlite error on {self.path}: {exc}") from None
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
                    raise InconsistencyError(f"the kelp database {self.path} is damaged: {exc}") from None

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
        listener = self.listener
        if listener is not None and (tx.deleted_queues or tx.reloaded):
            # Queues deleted here or (seen in a reloaded topology) by another process.
            listener.queues_deleted(_Gone(tx.deleted_queues, tx.topo.queues))
        if tx.touched:
            self._wake(tx.touched)
        if tx.next_due < self._next_due:
            self._next_due = tx.next_due
            if tx.held:  # a delayed message due before the waits in progress end: they recompute
                self._wake_everyone()

    def _topology_changed(self) -> bool:
        """Whether another process changed the topology since this one last loaded it (a read)."""
        reader = self._reader
        if reader is None:
            return False
        with self._reader_lock:
            try:
                row = reader.execute("SELECT value FROM meta WHERE key='topology'").fetchone()
            except sqlite3.Error:
                return False
        return row is not None and row[0] != self._topo.version

    def flush(self) -> None:
        """Commit everything buffered (publishes, acks) now."""
        if self._pending.count or self._acks or self._releases:
            self._run(_ops.nothing)

    def should_flush(self) -> bool:
        """True when the publishing thread should commit the buffer itself: a full batch while other
        processes share the file (see BATCH), else when the flusher fell behind."""
        if not self._shared:
            return self._pending.count >= HIGH_WATER
        first = self._first_pending
        return self._pending.count >= BATCH or (first is not None and time.monotonic() - first >= MAX_LINGER)

    # --- owners -------------------------------------------------------------------------------------------

    def connect(self) -> int:
        connection_id = self._run(self._insert_connection)
        self._owners.add(connection_id)
        return connection_id

    def _insert_connection(self, tx: _ops.Tx) -> int:
        row_id = tx.db.execute("INSERT INTO connections (process) VALUES (?)", (self._process_id,)).lastrowid
        assert row_id is not None
        return row_id

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """Release every message the connection holds (flagged redelivered), drop its consumers and
        exclusive queues."""
        if owner not in self._owners:
            return
        try:
            if self._lost is None:  # else nothing can be committed any more: forget the connection
                self._run(lambda tx: _ops.drop_connection(tx, owner))
        finally:
            self._owners.discard(owner)

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        ids = [(item.ref, owner) for item in unacked]

        def op(tx: _ops.Tx) -> None:
            _ops.close_channel(tx, owner, channel)
            if ids:
                _ops.release_rows(tx.db, ids)
                tx.touched.update(item.queue for item in unacked)

        self._run(op)

    # --- declarations ----------------------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> None:
        if not name:
            return
        self._run(
            lambda tx: _ops.declare_exchange(
                tx, name, type_, durable, auto_delete, internal, arguments, passive
            )
        )

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self._run(lambda tx: _ops.delete_exchange(tx, name, if_unused))

    def declare_queue(
        self,
        connection_id: int,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        return self._run(
            lambda tx: _ops.declare_queue(
                tx, connection_id, name, durable, exclusive, auto_delete, arguments, passive
            )
        )

    def delete_queue(self, connection_id: int, name: str, if_unused: bool, if_empty: bool) -> int:
        return self._run(lambda tx: _ops.delete_queue_checked(tx, connection_id, name, if_unused, if_empty))

    def purge_queue(self, connection_id: int, name: str) -> int:
        return self._run(lambda tx: _ops.purge_queue(tx, connection_id, name))

    def bind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._run(lambda tx: _ops.bind(tx, connection_id, kind, destination, source, routing_key, arguments))

    def unbind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._run(
            lambda tx: _ops.unbind(tx, connection_id, kind, destination, source, routing_key, arguments)
        )

    def queue_stats(self, unacked: Mapping[str, int] | None = None) -> list[tuple[str, int, int, int]]:
        """Counts from the file: the unacked copies of every process (``unacked`` is not needed)."""
        return self._run(_ops.queue_stats)

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return self._run(lambda tx: tx.topo.bindings())

    def cancel_delayed(self, message_id: str) -> int:
        """Drop the held copies of the delayed message ``message_id`` (committed); return how many."""
        return self._run(lambda tx: _ops.cancel_delayed(tx, message_id))

    # --- publishing --------------------------------------------------------------------------------------

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
                    stored = not self._pending.count and self._insert_row(held, _ops.HOLD_IF_CURRENT)
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
                    if self._uncounted >= FOLD_EVERY:
                        self._count_ready()
                    return 0
                if stored is None:
                    return None  # the disk is full: publish() reports it, with nothing stored
        found = _buffer.stage(topo, envelopes, time.time())
        if found is None:
            return None
        staged, durable = found
        durable = durable or confirm
        if not staged:
            return 0  # unroutable and not mandatory: dropped, as a broker drops it
        with self._buffer_lock:
            if not durable:
                self._last_buffer = now = time.monotonic()
                if self._first_pending is None:
                    self._first_pending = now
                    self._wakeup.set()
                elif self._pending.count < BATCH <= self._pending.count + len(staged) and not self._shared:
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
                if self._uncounted >= FOLD_EVERY:
                    self._count_ready()
                return True
            if blocking:
                self._run(_ops.nothing)
                return True
            if self._pending.count > INLINE_MAX:
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

    def _insert_row(self, row: _ops.Row | _ops.HeldRow, sql: str = _ops.INSERT_IF_CURRENT) -> bool | None:
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

    # --- consuming ---------------------------------------------------------------------------------------

    def consume(self, owner: int, channel: int, queue: str, tag: str) -> None:
        self._run(lambda tx: _ops.consume(tx, owner, channel, queue, tag))

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        self._run(lambda tx: _ops.cancel_consumer(tx, owner, channel, tag))

    def claim(
        self, owner: int, plan: Sequence[tuple[K, Sequence[tuple[C, int]], int]], limit: int
    ) -> list[tuple[K, C, list[Item]]]:
        idle = not (self._pending.count or self._acks or self._releases) and time.time() < self._next_due
        if idle and not self._ready({consumer.queue for _, rooms, _ in plan for consumer, _ in rooms}):
            return []  # nothing to claim: no write transaction
        claimed = self._run(lambda tx: _ops.claim(tx, owner, plan, limit))
        out: list[tuple[K, C, list[Item]]] = []
        malformed: list[tuple[bool, str, Any, str]] = []
        for channel, consumer, rows in claimed:
            if len(rows) > 1:
                # Highest priority first, then oldest: two stable C-keyed sorts.
                rows.sort(key=_by_id)
                rows.sort(key=_by_priority, reverse=True)
            items: list[Item] = []
            append = items.append
            for row in rows:
                message_id, _priority, body, props, headers, exchange, routing_key, redelivered = row
                try:
                    if type(body) is not bytes or type(exchange) is not str or type(routing_key) is not str:
                        body = _ops.read_row(body, props, headers, exchange, routing_key)[0]
                    properties = decode(props)
                    header_table = decode(headers) if headers else {}
                except Malformed as exc:
                    # Written from outside kelp: it leaves the queue; the rest of the batch goes on.
                    malformed.append((consumer.no_ack, consumer.queue, row, str(exc)))
                    continue
                append((message_id, body, properties, header_table, exchange, routing_key, bool(redelivered)))
            if items:
                out.append((channel, consumer, items))
        if malformed:
            self._quarantine(owner, malformed)
        return out

    def _ready(self, names: Iterable[str]) -> bool:
        """Whether one of the queues has a ready message (a read: no write lock)."""
        reader = self._reader
        if reader is None:
            return True
        with self._reader_lock:
            try:
                for name in names:
                    row = reader.execute(
                        "SELECT 1 FROM messages WHERE queue=? AND owner IS NULL LIMIT 1", (name,)
                    ).fetchone()
                    if row is not None:
                        return True
            except sqlite3.Error:
                return True  # let the write transaction report it
        return False

    def _quarantine(self, connection_id: int, items: list[tuple[bool, str, Any, str]]) -> None:
        """Take malformed claimed messages out of their queues (see :mod:`kelp._broker.malformed`)."""
        try:
            self._run(lambda tx: _ops.quarantine(tx, connection_id, items))
        except KelpError:
            # They stay claimed by this connection and return to their queue when it closes.
            logger.exception("kelp: could not take malformed messages out of %s", self.path)

    def _settle_later(self, into: list[tuple[int, int]], pairs: list[tuple[int, int]]) -> None:
        """Buffer acks or releases (``into``) of (message id, owner connection) for the next commit."""
        with self._buffer_lock:
            if self._first_settle is None:
                self._first_settle = time.monotonic()
                self._wakeup.set()
            into += pairs

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        while True:
            found = self._run(lambda tx: _ops.get(tx, owner, queue, no_ack))
            if found is None:
                return None
            row, count = found
            message_id, _p, body, props, headers, exchange, routing_key, redelivered = row
            try:
                body, properties, header_table = _ops.read_row(body, props, headers, exchange, routing_key)
            except Malformed as exc:
                # Written from outside kelp: it leaves the queue, and the next message is taken.
                self._quarantine(owner, [(no_ack, queue, row, str(exc))])
                continue
            item = (message_id, body, properties, header_table, exchange, routing_key, bool(redelivered))
            return item, count

    # --- settling ----------------------------------------------------------------------------------------

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """The DELETE commits with the next transaction of this process (group commit)."""
        self._settle_later(self._acks, [(item.ref, owner) for item in unacked])

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        pairs = [(item.ref, item.queue) for item in unacked]
        self._run(lambda tx: _ops.reject(tx, owner, pairs, requeue))

    # --- waiting -----------------------------------------------------------------------------------------

    def prepare_wait(self, queues: Collection[str], consuming: bool = True) -> float | None:
        """0 when there is work already, else seconds until the next timed event (None: none)."""
        if consuming and self._topology_changed():
            self._run(_ops.nothing)  # reloads it: consumers of a queue deleted elsewhere are cancelled
        self._wakeup.set()  # the flusher starts polling data_version for the waiting connection
        if self._pending.count or self._acks or self._releases:
            return 0.0
        if queues and self._ready(queues):
            return 0.0
        due = self._deadline()
        self._next_due = due
        if due == float("inf"):
            return None
        return max(0.0, due - time.time()) + 0.0005

    def _deadline(self) -> float:
        reader = self._reader
        if reader is None:
            return float("inf")
        with self._reader_lock:
            try:
                return _ops.next_deadline(reader)
            except sqlite3.Error:
                return time.time()

    @property
    def _waiting(self) -> int:
        listener = self.listener
        return listener.waiting if listener is not None else 0

    def _wake(self, names: set[str]) -> None:
        listener = self.listener
        if listener is not None and listener.waiting:
            listener.wake(names)

    def _wake_everyone(self) -> None:
        if self.listener is not None:
            self.listener.wake_all()

    # --- the flusher thread --------------------------------------------------------------------------

    def _flusher_loop(self) -> None:
        interval = POLL_MIN
        last_version: int | None = None
        now = time.monotonic()
        next_heartbeat = now + HEARTBEAT_EVERY
        last_reap = now
        while not self._stopping:
            now = time.monotonic()
            timeout = HEARTBEAT_EVERY
            due = float("inf")
            first = self._first_pending
            if first is not None and self._shared:
                due = max(first + LINGER, self._last_buffer + LINGER / 2)  # once the publisher paused
            elif first is not None:
                due = first + LINGER if self._pending.count < BATCH else now
            first = self._first_settle
            if first is not None:
                due = min(due, first + ACK_LINGER)
            if now >= due:
                self._guard(self.flush)
            elif due < float("inf"):
                timeout = due - now
            if self._waiting:
                version = self._data_version()
                if version != last_version:
                    last_version = version
                    interval = POLL_MIN
                    self._wake_everyone()
                else:
                    interval = min(interval * 1.5, POLL_MAX)
                timeout = min(timeout, interval)
            if now >= next_heartbeat:
                self._guard(self._heartbeat)
                next_heartbeat = now + HEARTBEAT_EVERY
            next_reap = last_reap + (REAP_WHILE_WAITING if self._waiting else REAP_IDLE)
            if now >= next_reap:
                self._guard(self._reap)
                last_reap = now
                next_reap = now + (REAP_WHILE_WAITING if self._waiting else REAP_IDLE)
            timeout = min(timeout, max(0.0, next_reap - now))
            if self._last_commit > self._checkpointed_at:
                due = self._checkpointed_at + _checkpoint.EVERY
                if now >= due:
                    self._checkpointed_at = now
                    self._guard(self._checkpoint)
                else:
                    timeout = min(timeout, due - now)
            self._wakeup.wait(timeout)
            self._wakeup.clear()

    def _guard(self, function: Callable[[], None]) -> None:
        if self._lost is not None:
            return  # nothing can be done on the file any more; the user's next operation says why
        try:
            function()
        except Exception as exc:
            if self._writer is not None and not self._stopping:
                # A full disk is an error to act on (buffered publishes wait for space); the rest is retried.
                level = logging.ERROR if isinstance(exc, ResourceError) else logging.WARNING
                logger.log(level, "kelp: sqlite background task %s failed: %s", function.__name__, exc)

    def _data_version(self) -> int | None:
        reader = self._reader
        if reader is None:
            return None
        with self._reader_lock:
            try:
                value: int = reader.execute("PRAGMA data_version").fetchone()[0]
                return value
            except sqlite3.Error:
                return None

    def _heartbeat(self) -> None:
        def op(tx: _ops.Tx) -> int:
            return tx.db.execute(
                "UPDATE processes SET heartbeat_at=? WHERE id=?", (tx.now, self._process_id)
            ).rowcount

        if self._run(op) == 0:
            self._lost = (
                f"this process was declared dead by another process sharing {self.path} "
                "(its heartbeat went stale); its unacked messages were redelivered: reconnect"
            )
            logger.error("kelp: %s", self._lost)

    def _reap(self) -> None:
        reader = self._reader
        if reader is None:
            return
        with self._reader_lock:
            rows = reader.execute(
                "SELECT id, pid, start_time, namespace, heartbeat_at FROM processes WHERE id != ?",
                (self._process_id,),
            ).fetchall()
        self._shared = bool(rows)
        if any(not self._is_alive(row, time.time()) for row in rows):
            self._run(self._reap_dead)

    def _is_alive(self, row: tuple[int, int, str | None, str, float], now: float) -> bool:
        _, pid, start_time, ns, heartbeat_at = row
        if ns == self._namespace:
            return process_state(pid, start_time)
        return heartbeat_at > now - self.options.heartbeat

    def _reap_dead(self, tx: _ops.Tx) -> int:
        """Drop every dead process's connections (releasing their messages); return how many live."""
        live = 0
        rows = tx.db.execute(
            "SELECT id, pid, start_time, namespace, heartbeat_at FROM processes WHERE id IS NOT ?",
            (self._process_id,),
        ).fetchall()
        for row in rows:
            if self._is_alive(row, tx.now):
                live += 1
                continue
            logger.info("kelp: process %s holding %s is gone; releasing its messages", row[1], self.path)
            for (connection_id,) in tx.db.execute(
                "SELECT id FROM connections WHERE process=?", (row[0],)
            ).fetchall():
                _ops.drop_connection(tx, connection_id)
            tx.db.execute("DELETE FROM processes WHERE id=?", (row[0],))
        return live

    def _checkpoint(self) -> None:
        self._checkpointer.run()


_by_id = itemgetter(0)
_by_priority = itemgetter(1)


_stores: dict[str, SqliteStore] = {}
_stores_lock = threading.Lock()


def store_for(path: str, options: StoreOptions) -> SqliteStore:
    """The process-wide store of the database file at ``path`` (created on first use)."""
    key = os.path.abspath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store._pid != os.getpid():
            store = _stores[key] = SqliteStore(key, options)
        return store


@atexit.register
def _shutdown_all() -> None:
    for store in list(_stores.values()):
        if store._pid == os.getpid():
            store.shutdown()
