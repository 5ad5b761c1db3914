"""The database sessions of a ``postgresql://`` store: a pool, composed statements, the topology snapshot,
and psycopg's failures mapped to kelp's."""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import Connection, Cursor, sql
from psycopg.conninfo import conninfo_to_dict

from kelp._broker.core.errors import ErrorMap
from kelp._broker.postgres._route import NOW, Topology, load_topology
from kelp._broker.postgres._watchdog import Watchdog
from kelp.exceptions import AccessRefused, InconsistencyError, OperationalError, PreconditionFailed

__all__ = ["ERRORS", "Database", "connect"]

#: Every session this process opened (see _forget_inherited).
_opened: weakref.WeakSet[Connection[Any]] = weakref.WeakSet()


def connect(conninfo: str) -> Connection[Any]:
    """A new autocommit session, remembered so that a forked child never ends it (see below)."""
    conn = psycopg.connect(conninfo, autocommit=True)
    _opened.add(conn)
    return conn


def _forget_inherited() -> None:
    """In a forked child: the parent's sessions are not this process's. Their descriptors are pointed
    at /dev/null, so that closing or collecting them here never ends the parent's sessions on the
    server (libpq would send Terminate on the shared socket), and using them fails instead of mixing
    this process's statements into the parent's stream. The child opens sessions of its own."""
    inherited, null = list(_opened), os.open(os.devnull, os.O_RDWR)
    _opened.clear()
    try:
        for conn in inherited:
            try:
                if not conn.closed:
                    os.dup2(null, conn.pgconn.socket)
            except (OSError, psycopg.Error):
                pass
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


#: psycopg's failures as kelp's, in one table (see kelp._broker.core.errors): a lost or refused connection
#: or a read-only server (a standby) is an OperationalError (reconnecting may help); a role without the
#: rights it needs, AccessRefused; a value PostgreSQL cannot store (a NUL character in a name, text with a
#: lone surrogate, which has no UTF-8, a binding key too long to index) is refused with PreconditionFailed;
#: a schema dropped under a running broker is an InconsistencyError. Anything else is a bug and
#: propagates as it is.
ERRORS = ErrorMap(
    (  # an OperationalError to psycopg, but nothing a reconnect helps: a binding key too long to index
        psycopg.errors.ProgramLimitExceeded,
        None,
        lambda exc, where: PreconditionFailed(f"postgresql {where} cannot store this value: {exc}"),
    ),
    (psycopg.OperationalError, None, lambda exc, where: OperationalError(f"postgresql {where}: {exc}")),
    (  # a standby (after a failover, a reconnect may reach the new primary)
        psycopg.errors.ReadOnlySqlTransaction,
        None,
        lambda exc, where: OperationalError(f"postgresql {where} is read-only (a standby?): {exc}"),
    ),
    (
        psycopg.errors.InsufficientPrivilege,
        None,
        lambda exc, where: AccessRefused(f"postgresql {where}: the database role may not: {exc}"),
    ),
    (psycopg.InterfaceError, None, lambda exc, where: OperationalError(f"postgresql {where}: {exc}")),
    (
        psycopg.DataError,
        None,
        lambda exc, where: PreconditionFailed(f"postgresql {where} cannot store this value: {exc}"),
    ),
    (
        UnicodeEncodeError,
        None,
        lambda exc, where: PreconditionFailed(f"postgresql {where} cannot store this text: {exc}"),
    ),
    (
        psycopg.errors.UndefinedTable,
        None,
        lambda exc, where: InconsistencyError(f"the kelp schema in postgresql {where} was dropped: {exc}"),
    ),
)


class Database:
    """Sessions to one database schema, shared by the threads of a process."""

    def __init__(self, conninfo: str, schema: str, flush_publishes: bool) -> None:
        self.conninfo = conninfo
        self.pid = os.getpid()  # a forked child makes a store of its own (store_for)
        self.flush_publishes = flush_publishes
        self.name = schema
        self.schema = sql.Identifier(schema)
        self.channel = f"kelp.{schema}"  # LISTEN/NOTIFY
        self._topology: Topology | None = None
        self._pool: list[Connection[Any]] = []
        self._guard = threading.Lock()
        self._statements: dict[str, sql.Composed] = {}
        parts = conninfo_to_dict(conninfo)
        server = f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"
        self.where = f"{server} (schema {schema})"  # for messages: no password
        self.watchdog = Watchdog(conninfo, self.where)

    def mapped(self) -> contextlib.AbstractContextManager[None]:
        """The boundary: psycopg's failures inside become kelp's (ERRORS)."""
        return ERRORS.boundary(self.where)

    def q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` the schema and ``{now}`` the server's clock, composed once."""
        found = self._statements.get(text)
        if found is None:
            found = self._statements[text] = sql.SQL(text.replace("{now}", NOW)).format(s=self.schema)
        return found

    def rows(self, cur: Cursor[Any], text: str, *params: Any, plan: bool = False) -> list[Any]:
        """Run ``text`` (see :meth:`q`); its rows, if it returns any. ``plan``: planned for these values
        each time, never prepared (a generic plan cannot tell one queue or floor from another: for
        claims it picked whole-table scans)."""
        cur.execute(self.q(text), params, prepare=False if plan else None)
        return cur.fetchall() if cur.description else []

    def one(self, cur: Cursor[Any], text: str, *params: Any, plan: bool = False) -> Any:
        """The first value of the first row (None without one)."""
        found = self.rows(cur, text, *params, plan=plan)
        return found[0][0] if found else None

    def open(self) -> Connection[Any]:
        with self.mapped():
            conn = connect(self.conninfo)
            # Committed, not waited for: a server crash may lose an ack (a redelivery) or a claim (the
            # copy stays ready); publishes and topology changes wait when they must (see _store).
            conn.execute("SET synchronous_commit = off")
        return conn

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Cursor[Any]]:
        """A pooled session's cursor, in autocommit (wrap work in ``cur.connection.transaction()``)."""
        with self._guard:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self.open()
        try:
            with self.mapped(), self.watchdog.watch(conn), conn.cursor() as cur:
                yield cur
        finally:
            if not (conn.closed or conn.broken):
                with self._guard:
                    self._pool.append(conn)
            else:  # the server went away (a restart): the idle sessions went with it
                self.close_pool()

    def close_pool(self) -> None:
        with self._guard:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Iterator[tuple[Cursor[Any], Topology]]:
        """A transaction ordered against topology changes (``exclusive``: making one), with the current
        topology. The lock is on ``messages`` (see ``_route``): ROW EXCLUSIVE as any writer's, or SHARE ROW
        EXCLUSIVE, which waits for the writers in flight and holds new ones until the change commits."""
        with self.cursor() as cur, cur.connection.transaction():
            if exclusive or self.flush_publishes:
                cur.execute("SET LOCAL synchronous_commit = on")
            mode = "SHARE ROW EXCLUSIVE" if exclusive else "ROW EXCLUSIVE"
            cur.execute(self.q(f"LOCK TABLE {{s}}.messages IN {mode} MODE"))
            version = self.one(cur, "SELECT value FROM {s}.meta WHERE key = 'topology'")
            topo = self._topology
            if topo is None or topo.version != version:
                topo = self._topology = load_topology(cur, self.schema)
            yield cur, topo

    def topology(self) -> Topology:
        """The process's snapshot of the topology (read in one REPEATABLE READ transaction if stale)."""
        topo = self._topology
        if topo is None:
            with self.cursor() as cur, cur.connection.transaction():
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                topo = self._topology = load_topology(cur, self.schema)
        return topo

    def forget_topology(self) -> None:
        self._topology = None

    def notify_ready(self, cur: Cursor[Any], rows: Sequence[tuple[str, int]]) -> None:
        """Announce copies ready again, ``(queue, id)``: each queue once, with its lowest id."""
        low: dict[str, int] = {}
        for queue, row_id in rows:
            low[queue] = min(row_id, low.get(queue, row_id))
        for queue, row_id in low.items():
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, f"r:{row_id}:{queue}"))
