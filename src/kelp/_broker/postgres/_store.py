"""The ``postgresql://`` store: kelp's storage protocol (:mod:`kelp._broker.core.store`) on PostgreSQL.

One store per (server, database, schema) per process, shared by its connections. Each kelp connection
is an *owner* with a database session of its own, registered in ``connections`` with its backend pid and
start time; its claims carry its id. When that session ends - the process closed it, was killed, or lost
the server - the owner is gone: every process with a kelp connection checks ``pg_stat_activity`` once a
second and puts the dead owners' claimed copies back, flagged redelivered (so within about 1 s).

Messages: one row per routed copy (``_route``); a claim is one ``UPDATE ... FOR UPDATE SKIP LOCKED``
ordered by priority then id, so consumers in many processes never take the same row; an ack deletes the
row (no row is updated twice: dead tuples stay few). Wake-ups are LISTEN/NOTIFY: a publish notifies
``r:<queue>`` for queues that have consumers, a deleted queue ``d:<queue>``; one listening session per
store (a thread) wakes the waiting connections. Only acks and claims skip the wait for the WAL flush
(``synchronous_commit`` off: losing one to a server crash means a redelivery, never a loss); publishes
of persistent messages and topology changes wait for it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import Connection, Cursor, sql

from kelp._broker.core import Session
from kelp._broker.core.store import Item, Listener, Unacked
from kelp._broker.postgres._route import (
    NOW,
    ROW,
    Topology,
    columns,
    copies_of,
    dead_letter_rows,
    insert_statement,
    load_topology,
    store_copies,
    values,
)
from kelp._broker.postgres._schema import ensure_schema
from kelp._broker.postgres._topology import TopologyOps
from kelp._broker.sqlite._codec import decode
from kelp._envelope import Envelope
from kelp.exceptions import MessageNacked, OperationalError

__all__ = ["PostgresStore", "store_for"]

T = TypeVar("T")
#: How often (seconds) a process looks for owners whose database session ended.
REAP_INTERVAL = 1.0
#: Acks are committed in batches: with the connection's next claim, at ACK_BATCH, or ACK_DELAY seconds later.
ACK_BATCH = 500
ACK_DELAY = 0.05
_READY = "owner IS NULL AND (expires_at IS NULL OR expires_at > " + NOW + ")"


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """psycopg's failures as kelp's: a lost or refused connection is an OperationalError."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise OperationalError(f"postgresql: {exc}".strip()) from exc


class PostgresStore(TopologyOps):
    listener: Listener | None

    def __init__(self, conninfo: str, schema: str, flush_publishes: bool = False) -> None:
        self.conninfo = conninfo
        self.flush_publishes = flush_publishes
        self.name = schema
        self.schema = sql.Identifier(schema)
        self.channel = f"kelp.{schema}"
        self.listener = None
        self._topology: Topology | None = None
        self._owners: dict[int, tuple[Connection[Any], threading.Lock]] = {}
        self._pool: list[Connection[Any]] = []
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._statements: dict[str, sql.Composed] = {}
        self.session: Session[PostgresStore] = Session(self)
        self.insert_one = insert_statement(self.schema, self.channel, True, one=True)
        self.insert_many = insert_statement(self.schema, self.channel, True)
        # When this process next looks for expired messages and queues (time.time()): lowered by its
        # own TTL publishes and queue declarations, re-read from the database at most a second later.
        self.next_due = 0.0
        # Acks waiting to be committed with the next claim, or by a timer (ACK_DELAY) when none comes.
        self._acks: list[Any] = []
        self._ack_lock = threading.Lock()
        self._ack_timer: threading.Timer | None = None
        # Per queue without priorities: [an id below which this process knows no ready copy, how many
        # times it was lowered]. A claim starts there rather than at the queue's head, where the index
        # holds the entries of copies already taken: they cannot be cleaned up while another session's
        # transaction is open, and would be stepped over by every claim. Kept only while listening:
        # every copy that becomes ready is announced with its id (which lowers the floor).
        self._floors: dict[str, list[int]] = {}
        self._heard = False

    def q(self, text: str) -> sql.Composed:
        """``text`` with ``{s}`` the schema, composed once."""
        found = self._statements.get(text)
        if found is None:
            found = self._statements[text] = sql.SQL(text.replace("{now}", NOW)).format(s=self.schema)
        return found

    # --- database sessions ---------------------------------------------------------------------------

    def _open(self) -> Connection[Any]:
        with mapped():
            conn = psycopg.connect(self.conninfo, autocommit=True)
            conn.execute("SET synchronous_commit = off")
        return conn

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Cursor[Any]]:
        """A pooled session's cursor, in autocommit (wrap work in ``cur.connection.transaction()``)."""
        with self._guard:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._open()
        try:
            with mapped(), conn.cursor() as cur:
                yield cur
        except BaseException:
            if conn.closed or conn.broken:
                conn = None
            raise
        finally:
            if conn is not None and not conn.closed:
                with self._guard:
                    self._pool.append(conn)

    @contextlib.contextmanager
    def locked(self, exclusive: bool = False) -> Iterator[tuple[Cursor[Any], Topology]]:
        """A transaction holding the topology lock (shared, or exclusive to change the topology), with
        a current topology snapshot."""
        with self.cursor() as cur, cur.connection.transaction():
            if exclusive or self.flush_publishes:
                cur.execute("SET LOCAL synchronous_commit = on")
            mode = "SHARE ROW EXCLUSIVE" if exclusive else "ROW EXCLUSIVE"
            cur.execute(self.q("LOCK TABLE {s}.messages IN " + mode + " MODE"))
            cur.execute(self.q("SELECT 0, value FROM {s}.meta WHERE key = 'topology'"))
            row = cur.fetchone()
            topo = self._topology
            if topo is None or row is None or topo.version != row[1]:
                topo = self._topology = load_topology(cur, self.schema)
            yield cur, topo

    def topology(self) -> Topology:
        topo = self._topology
        if topo is None:
            with self.cursor() as cur, cur.connection.transaction():
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                topo = self._topology = load_topology(cur, self.schema)
        return topo

    def forget_topology(self) -> None:
        self._topology = None

    def _owner(self, owner: int, work: Callable[[Cursor[Any]], T]) -> T:
        """Run ``work`` on the owner's own session (its claims are tied to it)."""
        try:
            conn, lock = self._owners[owner]
        except KeyError:
            raise OperationalError("the postgresql:// connection is closed") from None
        with lock, mapped(), conn.cursor() as cur:
            return work(cur)

    # --- owners -------------------------------------------------------------------------------------

    def connect(self) -> int:
        conn = self._open()
        try:
            with mapped():
                ensure_schema(conn, self.name)
                row = conn.execute(
                    self.q(
                        "INSERT INTO {s}.connections (pid, started) SELECT pid, backend_start "
                        "FROM pg_stat_activity WHERE pid = pg_backend_pid() RETURNING id"
                    )
                ).fetchone()
        except BaseException:
            conn.close()
            raise
        assert row is not None
        with self._guard:
            self._owners[row[0]] = (conn, threading.Lock())
            if self._thread is None:
                self._stop.clear()
                self._listening.clear()
                self._thread = threading.Thread(target=self._listen, name=f"kelp-pg-{self.name}", daemon=True)
                self._thread.start()
        self._listening.wait(10)
        return int(row[0])

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        try:
            self.flush_acks()
            self.drop_owners([owner])
        finally:
            with self._guard:
                conn, _ = self._owners.pop(owner, (None, None))
                last = not self._owners
                thread, self._thread = (self._thread, None) if last else (None, self._thread)
            if conn is not None:
                conn.close()
            if thread is not None:
                self._stop.set()
                with contextlib.suppress(OperationalError), self.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, 's')", (self.channel,))
                thread.join(5)
                with self._guard:
                    pool, self._pool = self._pool, []
                for conn in pool:
                    conn.close()

    def drop_owners(self, owners: list[int]) -> None:
        """The owners are gone: their copies go back (redelivered), their consumers and exclusive queues
        go away, their rows too."""
        with self.cursor() as cur, cur.connection.transaction():
            cur.execute(self.q("DELETE FROM {s}.connections WHERE id = ANY(%s) RETURNING id"), (owners,))
            owners = [row[0] for row in cur.fetchall()]  # another process may have dropped them
            cur.execute(
                self.q(
                    "UPDATE {s}.messages SET owner = NULL, redelivered = true WHERE owner = ANY(%s) "
                    "RETURNING queue, id"
                ),
                (owners,),
            )
            self.notify_ready(cur, cur.fetchall())
            cur.execute(
                self.q("DELETE FROM {s}.consumers WHERE connection = ANY(%s) RETURNING queue"), (owners,)
            )
            empty = self.consumers_left(cur, {row[0] for row in cur.fetchall()})
            cur.execute(self.q("SELECT name FROM {s}.queues WHERE exclusive_owner = ANY(%s)"), (owners,))
            empty += [row[0] for row in cur.fetchall()]
        self.delete_queues(set(empty))

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        self.flush_acks()
        with self.cursor() as cur, cur.connection.transaction():
            cur.execute(
                self.q("DELETE FROM {s}.consumers WHERE connection = %s AND channel = %s RETURNING queue"),
                (owner, channel),
            )
            empty = self.consumers_left(cur, {row[0] for row in cur.fetchall()})
            self.release(cur, unacked)
        self.delete_queues(empty)

    def release(self, cur: Cursor[Any], unacked: Sequence[Unacked]) -> None:
        if unacked:
            cur.execute(
                self.q(
                    "UPDATE {s}.messages SET owner = NULL, redelivered = true WHERE id = ANY(%s) "
                    "RETURNING queue, id"
                ),
                ([u.ref for u in unacked],),
            )
            self.notify_ready(cur, cur.fetchall())

    def notify_ready(self, cur: Cursor[Any], rows: Sequence[tuple[str, int]]) -> None:
        """Wake the consumers of the queues of ``rows`` ``(queue, id)`` (which are ready again)."""
        low: dict[str, int] = {}
        for queue, row_id in rows:
            low[queue] = min(row_id, low.get(queue, row_id))
        for queue, row_id in low.items():
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, f"r:{row_id}:{queue}"))

    # --- messages -----------------------------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        returned: list[Envelope] = []
        refused: list[str] = []
        while True:
            topo = self.topology()
            try:
                routed = [(e, copies_of(topo, e)) for e in envelopes]
            except Exception:
                if self._topology is topo and self._reloaded(topo):
                    continue  # routed on an old snapshot: route again on the current one
                raise
            copies = [c for _, cs in routed for c in cs]
            for copy in copies:
                self.due(None if copy.ttl is None else copy.ttl / 1000)
            if any(c.queue.args.bounded for c in copies):
                with self.locked() as (cur, current):
                    if current is not topo:
                        continue
                    refused = store_copies(cur, self.schema, self.channel, topo, copies)
            elif (copies or any(e.mandatory for e in envelopes)) and not self._insert_checked(topo, copies):
                self._topology = None
                continue
            returned = [e for e, cs in routed if not cs and e.mandatory]
            break
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish): "
                "message not enqueued there"
            )
        return returned

    def _reloaded(self, topo: Topology) -> bool:
        """Reload the snapshot; True when it had changed."""
        self._topology = None
        return self.topology().version != topo.version

    def _insert_checked(self, topo: Topology, copies: list[Any]) -> bool:
        """Store unbounded copies in one round trip, if ``topo`` is still current (else store nothing)."""
        persistent = self.flush_publishes and any(c.persistent for c in copies)
        if len(copies) == 1:
            statement, params = self.insert_one, [*values(copies[0]), topo.version]
        else:
            statement, params = self.insert_many, [*columns(copies), topo.version]
        with self.cursor() as cur:
            if persistent:
                with cur.connection.transaction():
                    cur.execute("SET LOCAL synchronous_commit = on")
                    cur.execute(statement, params)
            else:
                cur.execute(statement, params)
            row = cur.fetchone()
        return row is not None and row[0] == topo.version

    def claim(
        self, owner: int, plan: Sequence[tuple[Any, Sequence[tuple[Any, int]], int]], limit: int
    ) -> list[Any]:
        out: list[Any] = []
        self.tick()

        def work(cur: Cursor[Any]) -> None:
            self.flush_acks(cur)
            left = limit
            for channel, rooms, channel_room in plan:
                for consumer, room in rooms:
                    n = min(room, channel_room, left)
                    if n <= 0:
                        break
                    items = self._claim_rows(cur, owner, consumer.queue, n, consumer.no_ack, True)
                    if items:
                        out.append((channel, consumer, items))
                        channel_room -= len(items)
                        left -= len(items)

        self._owner(owner, work)
        return out

    def _floor(self, queue: str) -> tuple[int, int] | None:
        queue_def = self.topology().queues.get(queue)
        if not self._heard or queue_def is None or queue_def.args.max_priority:
            return None
        with self._guard:
            floor = self._floors.setdefault(queue, [0, 0])
            return floor[0], floor[1]

    def lower_floor(self, queue: str, row_id: int) -> None:
        with self._guard:
            floor = self._floors.get(queue)
            if floor is not None:
                floor[0] = min(floor[0], row_id)
                floor[1] += 1

    def _claim_rows(
        self, cur: Cursor[Any], owner: int, queue: str, n: int, no_ack: bool, floor: bool = False
    ) -> list[Item]:
        known = self._floor(queue) if floor else None
        params: list[Any]
        if known is None:
            where, params = "queue = %s AND ", [queue]
        else:
            where, params = "queue = %s AND priority = 0 AND id >= %s AND ", [queue, known[0]]
        pick = f"SELECT id FROM {{s}}.messages WHERE {where}{_READY} ORDER BY priority DESC, id LIMIT %s"
        pick += " FOR UPDATE SKIP LOCKED"
        if no_ack:
            text = f"DELETE FROM {{s}}.messages m USING ({pick}) c WHERE m.id = c.id RETURNING m.*"
            cur.execute(self.q(text), (*params, n))
        else:
            text = f"UPDATE {{s}}.messages m SET owner = %s FROM ({pick}) c WHERE m.id = c.id RETURNING m.*"
            cur.execute(self.q(text), (owner, *params, n))
        rows = sorted(cur.fetchall(), key=lambda r: (-r[2], r[0]))
        if known is not None and rows:
            with self._guard:
                entry = self._floors.get(queue)
                if entry is not None and entry[1] == known[1]:  # not lowered meanwhile
                    entry[0] = max(entry[0], rows[-1][0] + 1)
        # m.*: id, queue, priority, body, properties, headers, exchange, routing_key, redelivered, ...
        return [(r[0], r[3], decode(r[4]), decode(r[5]), r[6], r[7], r[8]) for r in rows]

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        self.tick()
        self.check_queue(owner, queue, touch=True)

        def work(cur: Cursor[Any]) -> tuple[Item, int] | None:
            items = self._claim_rows(cur, owner, queue, 1, no_ack)
            if not items:
                return None
            cur.execute(self.q("SELECT count(*) FROM {s}.messages WHERE queue = %s AND " + _READY), (queue,))
            row = cur.fetchone()
            return items[0], int(row[0]) if row else 0

        return self._owner(owner, work)

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        with self._ack_lock:
            self._acks.extend(u.ref for u in unacked)
            if len(self._acks) < ACK_BATCH:
                if self._ack_timer is None:
                    self._ack_timer = threading.Timer(ACK_DELAY, self.flush_acks)
                    self._ack_timer.daemon = True
                    self._ack_timer.start()
                return
        self.flush_acks()

    def flush_acks(self, cur: Cursor[Any] | None = None) -> None:
        """Delete the acked rows (with ``cur`` when given: the caller's session, before its own work)."""
        with self._ack_lock:
            ids, self._acks = self._acks, []
            timer, self._ack_timer = self._ack_timer, None
        if timer is not None:
            timer.cancel()
        if not ids:
            return
        try:
            if cur is not None:
                cur.execute(self.q("DELETE FROM {s}.messages WHERE id = ANY(%s)"), (ids,))
                return
            with self.cursor() as own:
                own.execute(self.q("DELETE FROM {s}.messages WHERE id = ANY(%s)"), (ids,))
        except OperationalError:
            pass  # the session is gone: those copies come back redelivered (at-least-once), never lost

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        self.flush_acks()
        if not unacked:
            return
        if requeue:
            with self.cursor() as cur, cur.connection.transaction():
                self.release(cur, unacked)
            return
        with self.locked() as (cur, topo):
            cur.execute(
                self.q(f"DELETE FROM {{s}}.messages WHERE id = ANY(%s) RETURNING {ROW}"),
                ([u.ref for u in unacked],),
            )
            order = {u.ref: i for i, u in enumerate(unacked)}
            rows = sorted(cur.fetchall(), key=lambda r: order.get(r[0], 0))
            dead_letter_rows(cur, self.schema, self.channel, topo, rows, "rejected")

    # --- time and waiting ---------------------------------------------------------------------------

    def expire(self) -> None:
        """Dead-letter the ready copies past their TTL; delete the queues unused past x-expires."""
        with self.locked() as (cur, topo):
            cur.execute(
                self.q(
                    f"DELETE FROM {{s}}.messages WHERE id IN (SELECT id FROM {{s}}.messages "
                    "WHERE expires_at <= {now} "
                    f"AND owner IS NULL FOR UPDATE SKIP LOCKED) RETURNING {ROW}"
                )
            )
            rows = sorted(cur.fetchall(), key=lambda r: (r[1], -r[2], r[0]))
            dead_letter_rows(cur, self.schema, self.channel, topo, rows, "expired")
        with self.cursor() as cur:
            cur.execute(
                self.q(
                    "SELECT name FROM {s}.queues q WHERE expires_ms IS NOT NULL "
                    "AND last_used + expires_ms / 1000.0 "
                    "<= {now} AND NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name)"
                )
            )
            unused = [row[0] for row in cur.fetchall()]
        if unused:
            self.delete_queues(unused)

    def tick(self) -> None:
        """Expire what is due (see ``next_due``)."""
        now = time.time()
        if now >= self.next_due:
            wait = self._deadline(())[1]
            self.next_due = now + min(REAP_INTERVAL, wait if wait is not None else REAP_INTERVAL)

    def due(self, seconds: float | None) -> None:
        if seconds is not None:
            self.next_due = min(self.next_due, time.time() + seconds)

    def prepare_wait(self, queues: Collection[str]) -> float | None:
        ready, wait = self._deadline(queues)
        return 0.0 if ready else wait

    def _has_ready(self, cur: Cursor[Any], queue: str) -> bool:
        known = self._floor(queue)
        if known is None:
            cur.execute(
                self.q("SELECT EXISTS (SELECT 1 FROM {s}.messages WHERE queue = %s AND " + _READY + ")"),
                (queue,),
            )
        else:
            cur.execute(
                self.q(
                    "SELECT EXISTS (SELECT 1 FROM {s}.messages WHERE queue = %s AND priority = 0 "
                    "AND id >= %s AND " + _READY + ")"
                ),
                (queue, known[0]),
            )
        row = cur.fetchone()
        return bool(row and row[0])

    def _deadline(self, queues: Collection[str]) -> tuple[bool, float | None]:
        """Expire what is due; whether ``queues`` have ready copies, and the seconds to the next deadline."""
        with self.cursor() as cur:
            self.flush_acks(cur)
            cur.execute(
                self.q(
                    "SELECT {now}, (SELECT min(expires_at) FROM {s}.messages "
                    "WHERE expires_at IS NOT NULL AND owner IS NULL), "
                    "(SELECT min(last_used + expires_ms / 1000.0) FROM {s}.queues q "
                    "WHERE expires_ms IS NOT NULL "
                    "AND NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name))"
                )
            )
            row = cur.fetchone()
            ready = any(self._has_ready(cur, queue) for queue in queues)
        assert row is not None
        now, *deadlines = row
        due = min((d for d in deadlines if d is not None), default=None)
        if due is not None and due <= now:
            self.expire()
            return True, 0.0
        return ready, None if due is None else max(0.0, due - now)

    # --- the listening session ---------------------------------------------------------------------

    def _listen(self) -> None:
        """Wake waiting connections on notifications; put dead owners' copies back every second."""
        conn: Connection[Any] | None = None
        next_reap = 0.0
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True)
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._heard = True
                    self._listening.set()
                    if self.listener is not None:
                        self.listener.wake_all()  # what was missed while not listening
                for note in conn.notifies(timeout=REAP_INTERVAL):
                    self._notified(note.payload)
                    if self._stop.is_set():
                        break
                if time.monotonic() >= next_reap and not self._stop.is_set():
                    next_reap = time.monotonic() + REAP_INTERVAL
                    self.reap()
                    self._check_floors()
            except (psycopg.Error, OperationalError):
                self._forget_floors()
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.2)
        self._forget_floors()
        if conn is not None:
            conn.close()
        self._listening.set()

    def _check_floors(self) -> None:
        """Catch a copy that became ready below a floor unannounced: one whose publish began before the
        first consumer of its queue registered (it saw no consumer to wake) and committed after a claim
        passed its id. Rare; found here within a second."""
        with self._guard:
            floors = [(queue, floor[0]) for queue, floor in self._floors.items() if floor[0]]
        for queue, low in floors:
            with self.cursor() as cur:
                cur.execute(
                    self.q(
                        "SELECT min(id) FROM {s}.messages WHERE queue = %s AND priority = 0 AND id < %s AND "
                        + _READY
                    ),
                    (queue, low),
                )
                row = cur.fetchone()
            if row and row[0] is not None:
                self.lower_floor(queue, row[0])
                if self.listener is not None:
                    self.listener.wake((queue,))

    def _forget_floors(self) -> None:
        """Not listening: announcements may be missed, so claims start at queue heads again."""
        with self._guard:
            self._heard = False
            self._floors.clear()

    def _notified(self, payload: str) -> None:
        listener = self.listener
        if listener is None:
            return
        kind, _, rest = payload.partition(":")
        if kind == "r":
            row_id, _, queue = rest.partition(":")
            self.lower_floor(queue, int(row_id))
            listener.wake((queue,))
        elif kind == "d":
            with self._guard:
                self._floors.pop(rest, None)
            listener.queues_deleted({rest})

    def reap(self) -> None:
        """Let go of the owners whose database session ended (killed, crashed, cut off)."""
        with self.cursor() as cur:
            cur.execute(
                self.q(
                    "SELECT id FROM {s}.connections c WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
                    "WHERE a.pid = c.pid AND a.backend_start = c.started)"
                )
            )
            dead = [row[0] for row in cur.fetchall()]
        if dead:
            self.drop_owners(dead)


_stores: dict[tuple[str, str, bool], PostgresStore] = {}
_stores_lock = threading.Lock()


def store_for(conninfo: str, schema: str, flush_publishes: bool = False) -> PostgresStore:
    """The process's store for one database schema (created on first use)."""
    key = (conninfo, schema, flush_publishes)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = PostgresStore(conninfo, schema, flush_publishes)
        return store
