# Generated from src/kelp/aio/transport/sqlite.py by scripts/unasync.py; do not edit.
"""``sqlite://``: the embedded default broker - durable, multi-process, no server.

``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` name a database file; every process
and thread that opens the same file shares its exchanges, queues and messages, and kelp routes at publish
time (RabbitMQ's semantics, the same as ``memory://``). Query options: ``synchronous=normal|full``
(``full`` fsyncs every commit: power-loss safe), ``busy_timeout`` (seconds to wait for another process's
write lock before raising OperationalError, default 10), ``heartbeat`` (seconds after which a process in
another pid namespace that stopped refreshing its heartbeat is presumed dead, default 30) and
``confirm_publish=true`` (also a transport option).

What ``publish`` guarantees on return (without ``confirm_publish``, the default):

* a persistent message (``delivery_mode`` 2, the default) is committed to the file: it survives ``kill
  -9`` of every process (with ``synchronous=normal``, the default: WAL commits reach the operating system
  before publish returns) and power loss too with ``synchronous=full`` (every commit fsyncs). The commit is
  the confirm: there is no outbox, ``flush()`` has nothing to wait for. A message routed to one queue is
  one INSERT that SQLite commits on its own; the publishes of other threads (or, in ``kelp``, of other
  tasks of the connection) waiting meanwhile share one commit.
* a transient message is routed and buffered in this process, and committed with others (group commit)
  by the next operation of this process on the file, at close, or by the store's timing rules (about a
  millisecond after the publisher pauses or 512 wait; see docs/transports.md): a ``kill -9`` inside that
  window can lose it; a clean close (or interpreter exit) never does. Other connections of this process
  see it at once.
* a message that is ``mandatory``, targets an exchange this process does not know yet, or reaches a queue
  with ``x-overflow: reject-publish[-dlx]`` is committed before publish returns, whatever its delivery
  mode: unroutable mandatory messages are returned and refusals raise MessageNacked, as on ``memory://``.
  A refusal found only when buffered transient messages commit (the queue was redeclared meanwhile) is
  raised, naming them, by the next publish or flush of this process.

``confirm_publish=true`` is accepted and changes nothing for persistent messages (they are always
committed); it commits transient ones before publish returns too.

Acks are committed with the next transaction or within 50 ms; an ack lost to ``kill -9`` means a
redelivery (flagged), never a loss.
Unacked messages return to their queue, flagged ``redelivered``, when their channel or connection closes
or their process dies: every process looks for dead ones (by pid and process start time, or a stale
heartbeat) every 0.25 s while one of its consumers waits, 0.5 s otherwise. When a process opens
the file and no other live process has it open, it restarts the broker as RabbitMQ would: non-durable
queues and exchanges and transient messages are dropped; persistent messages on durable queues survive.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kelp._backend import Lock, run_blocking, sleep
from kelp._broker.core import Session
from kelp._broker.sqlite import SqliteStore, StoreOptions, store_for
from kelp._broker.sqlite._schema import make_private
from kelp._envelope import Envelope
from kelp.exceptions import OperationalError, UsageError
from kelp.transport._session_channel import SessionChannel, SessionTransport
from kelp.transport.base import DEFAULT_IMPLEMENTS, Implements
from kelp.url import URL

__all__ = ["SqliteChannel", "SqliteTransport"]

_TRUE = frozenset({"1", "true", "yes", "on"})


class SqliteChannel(SessionChannel):
    """A channel of the embedded broker: calls that may wait for the file's write lock run in a worker
    thread; a publish goes through the store's group commit (see the module docstring)."""

    def __init__(self, transport: SqliteTransport, store: SqliteStore, connection_id: int) -> None:
        super().__init__(store.session, connection_id)
        self._transport = transport
        self._store = store

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        store = self._store
        # Persistent messages are committed before this returns; transient ones are buffered (unless
        # confirm_publish). None: a message needs the broker's answer (publish commits and gives it).
        confirm = self._transport.confirm_publish
        ticket = store.send(envelopes, True, confirm)
        if ticket is None:
            return run_blocking(store.publish, envelopes)
        if ticket:
            self._transport.commit(ticket)
        store.raise_refused()  # transient publishes refused at their (later) commit
        return []

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        # In memory only: the DELETE is group-committed with this process's next transaction.
        self._session.ack(self._connection_id, self.channel_id, delivery_tag, multiple)

    def cancel_delayed(self, message_id: str) -> int:
        # The store commits this process's buffered publishes first, so it finds them.
        return run_blocking(self._store.cancel_delayed, message_id)


def database_path(url: URL) -> str:
    """The database file a ``sqlite://`` URL names (the default file when it names none)."""
    from kelp.connection import default_sqlite_path

    if not url.path:
        return default_sqlite_path()
    if url.path == ":memory:":
        raise UsageError(
            "sqlite:///:memory: is not supported: every connection and process shares one database file; "
            "use memory:// for a broker that lives in this process"
        )
    return os.path.abspath(url.path)


def prepare_default_path(path: str) -> None:
    """Make the default database private: its directory 0700 (created if missing; kelp's own ``kelp``
    directory under the XDG data directory is tightened if it exists), the file and its -wal/-shm 0600,
    whatever the umask. Other users on the machine cannot read the messages."""
    directory = os.path.dirname(path)
    existed = os.path.isdir(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # A KELP_HOME directory that existed is the user's own choice; everything else is kelp's.
    ours = not existed or not os.environ.get("KELP_HOME")
    if ours and os.stat(directory).st_uid == os.geteuid():
        os.chmod(directory, 0o700)
    make_private(path)


class SqliteTransport(SessionTransport[Session[SqliteStore]]):
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(delayed_delivery=True)
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {"confirm_publish", "synchronous", "busy_timeout", "heartbeat"}
    )

    driver_type: ClassVar[str] = "sqlite"
    driver_name: ClassVar[str] = "sqlite3"

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.path = database_path(url)
        self.store_options = StoreOptions.from_query(url.query)
        confirm = url.query.get("confirm_publish", "").lower() in _TRUE
        self.confirm_publish = confirm or bool(options.get("confirm_publish"))
        self._store: SqliteStore | None = None
        self._committing = Lock()  # one commit in a worker thread at a time (see commit)

    @property
    def is_connected(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> SqliteStore:
        if self._store is None:
            raise OperationalError("the sqlite:// connection is closed")
        return self._store

    def _current_session(self) -> Session[SqliteStore] | None:
        return None if self._store is None else self._store.session

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": self.path, "confirm_publish": self.confirm_publish}

    def connect(self, timeout: float | None) -> None:
        if self._store is not None:
            return
        from kelp.connection import default_sqlite_path

        if self.path == default_sqlite_path():
            run_blocking(prepare_default_path, self.path)
        store = store_for(self.path, self.store_options)
        run_blocking(store.attach)
        try:
            self._connection_id = run_blocking(store.session.connect, self._signal)
        except BaseException:
            run_blocking(store.detach)
            raise
        self._store = store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is None:
            return
        try:
            run_blocking(store.session.disconnect, self._connection_id)
        finally:
            run_blocking(store.detach)

    def open_channel(self) -> SqliteChannel:
        return SqliteChannel(self, self.store, self._connection_id)

    def commit(self, ticket: int) -> None:
        """Return once the publishes up to ``ticket`` (see ``SqliteStore.send``) are committed.

        Group commit for tasks: this first lets the other tasks that are publishing now buffer theirs, so
        that one commit takes them all; it commits on the event loop's thread when that is quick (see
        ``SqliteStore.commit``), else in a worker thread, one at a time per connection - the tasks
        waiting for it find their publishes committed by it or commit the next batch together. (The sync
        face needs none of this: its publishing thread commits inside ``SqliteStore.send``, and threads
        publishing at once share commits there.)
        """
        store = self.store
        sleep(0)
        if store.commit(ticket, False):
            return
        with self._committing:
            if not store.committed(ticket):
                run_blocking(store.commit, ticket)

    def flush(self, timeout: float | None) -> None:
        """Commit whatever this process buffered (transient publishes, acks). Persistent publishes are
        committed before they return, so there is no outbox to wait for. A commit waits at most
        ``busy_timeout`` for another process's write lock (then OperationalError), whatever ``timeout``."""
        store = self.store
        run_blocking(store.flush)
        store.raise_refused()
