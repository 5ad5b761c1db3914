"""The state of a :class:`~kelp._broker.sqlite._store.SqliteStore` (one per process and database file),
and its cheap reads: the *reader* connection answers, without the write lock, whether a queue has ready
messages, when the next deadline is, whether another process committed (``PRAGMA data_version``) or
changed the topology.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping
from typing import TypeVar

from kelp._broker.core.store import Claimer, Listener
from kelp._broker.sqlite import _checkpoint, _declare
from kelp._broker.sqlite._buffer import PublishBuffer
from kelp._broker.sqlite._schema import (
    namespace,
)
from kelp._broker.sqlite._topology import EMPTY, Topology
from kelp._broker.sqlite._watch import FileIdentity
from kelp._envelope import Envelope
from kelp._options import seconds_option
from kelp.exceptions import (
    UsageError,
)

logger = logging.getLogger("kelp.transport.sqlite")

# Whether a queue has a ready message: in the ready index, or fresh above the ready mark (not folded into
# the index yet, see _schema._FRESH; found by id range).
_READY = (
    "SELECT EXISTS (SELECT 1 FROM messages WHERE queue=?1 AND owner IS NULL AND fresh IS NULL) OR EXISTS "
    "(SELECT 1 FROM messages WHERE id > (SELECT value FROM meta WHERE key='ready_mark') "
    "AND fresh IS NOT NULL AND queue=?1)"
)

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


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
    """The queues a transaction deleted, or that are missing from the topology it reloaded. With
    ``registered`` (a topology reloaded: another process changed it), also those of this process's
    consumers no longer registered on them: the queue was deleted and declared again meanwhile (its
    deletion removed the registrations), so its consumers are cancelled as a deletion cancels them."""

    __slots__ = ("_found", "deleted", "existing", "registered")

    def __init__(
        self,
        deleted: set[str],
        existing: Mapping[str, object],
        registered: Callable[[], Container[str]] | None = None,
    ) -> None:
        self.deleted = deleted
        self.existing = existing
        self.registered = registered
        self._found: Container[str] | None = None  # read once, when first asked

    def __contains__(self, name: object) -> bool:
        if name in self.deleted or name not in self.existing:
            return True
        if self.registered is None:
            return False
        if self._found is None:
            self._found = self.registered()
        return name not in self._found


class StoreState:
    """What every part of the sqlite store shares: connections to the file, buffers, timers."""

    # --- state --------------------------------------------------------------------------------------------

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
        self._topo_seen = float("-inf")  # when the snapshot was last known to be the current topology
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
        self._uncounted = 0  # rows this process inserted above the ready mark (see _tuning.FOLD_EVERY)

    # --- reads without the write lock ---------------------------------------------------------------------

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

    def _topology_stale(self, within: float) -> bool:
        """Whether the snapshot may be older than the topology: not known current within the last
        ``within`` seconds, and another process changed the topology since it was loaded."""
        now = time.monotonic()
        if now - self._topo_seen <= within:
            return False
        if self._topology_changed():
            return True
        self._topo_seen = now
        return False

    def _ready(self, names: Iterable[str]) -> bool:
        """Whether one of the queues has a ready message (a read: no write lock)."""
        reader = self._reader
        if reader is None:
            return True
        with self._reader_lock:
            try:
                for name in names:
                    if reader.execute(_READY, (name,)).fetchone()[0]:
                        return True
            except sqlite3.Error:
                return True  # let the write transaction report it
        return False

    def _deadline(self) -> float:
        reader = self._reader
        if reader is None:
            return float("inf")
        with self._reader_lock:
            try:
                return _declare.next_deadline(reader)
            except sqlite3.Error:
                return time.time()

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

    # --- wake-ups -----------------------------------------------------------------------------------------

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
