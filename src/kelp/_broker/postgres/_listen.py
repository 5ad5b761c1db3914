"""The listening half of a ``postgresql://`` store: one thread per store per process that turns NOTIFYs
into wake-ups, lets go of dead owners (and tells its own lost ones), keeps its owners' sessions from
idling past their liveness (see ``_owners``), keeps the claim floors, and while connections of the process
wait, expires what falls due (TTLs, x-expires, delayed messages: another process's announce nothing).

Announcements on the store's channel: ``r:<id>:<queue>`` (copies became ready in the queue, the lowest
id ``<id>``), ``w:<due>`` (a delayed message was held due earlier than every other: waiting
consumers compute their wait again), ``d:<queue>`` (the queue was deleted), ``s`` (stop listening:
this process is done).

Floors. Per queue without priorities the process keeps an id below which it knows no ready copy; a claim
starts there rather than at the queue's head. At the head, the index holds the entries of copies already
taken, which VACUUM cannot remove while some session's transaction is open: every claim would step over
them. Every copy that becomes ready is announced with its id, which lowers the floor; while not listening
there are no floors. The one copy an announcement misses - published by a statement that began before the
queue's first consumer registered, and committed after a claim passed its id - is found by a check each
second.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import Connection, sql

from kelp._broker.postgres._db import connect
from kelp._broker.postgres._topology import TopologyOps
from kelp.exceptions import KelpError, OperationalError

__all__ = ["READY", "REAP_INTERVAL", "Listening", "session_name"]

logger = logging.getLogger(__name__)

#: How often (seconds) a process looks for owners whose database session ended.
REAP_INTERVAL = 1.0
READY = "owner IS NULL AND (expires_at IS NULL OR expires_at > {now})"


# The owners of claimed copies that have no row in connections, one index probe per distinct owner.
_ORPHANS = """WITH RECURSIVE o(owner) AS (
    (SELECT owner FROM {s}.messages WHERE owner IS NOT NULL ORDER BY owner LIMIT 1)
    UNION ALL
    SELECT (SELECT m.owner FROM {s}.messages m WHERE m.owner > o.owner ORDER BY m.owner LIMIT 1)
    FROM o WHERE o.owner IS NOT NULL)
SELECT owner FROM o WHERE owner IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM {s}.connections c WHERE c.id = o.owner)"""


def session_name(id_column: str) -> str:
    """SQL for an owner session's application_name, from its id column and the schema (a parameter)."""
    return f"left('kelp ' || {id_column} || ' ' || %s, 63)"


class Listening(TopologyOps):
    def __init__(self, conninfo: str, schema: str, flush_publishes: bool) -> None:
        super().__init__(conninfo, schema, flush_publishes)
        self.listener: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._floors: dict[str, list[int]] = {}  # queue -> [floor, times lowered]
        self._heard = False
        # When this process next looks for expired messages and queues and due delayed ones (time.time()):
        # lowered by its own TTL and delayed publishes, queue declarations and announced due times,
        # re-read from the database at most a second later.
        self.next_due = 0.0

    def start_listening(self) -> None:
        with self._guard:
            if self._thread is not None:
                return
            self._stop.clear()
            self._listening.clear()
            self._thread = threading.Thread(target=self._listen, name=f"kelp-pg-{self.name}", daemon=True)
            self._thread.start()
        self.watchdog.start()
        self._listening.wait(10)

    def stop_listening(self) -> None:
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self.watchdog.stop()
        self._stop.set()
        try:
            with self.cursor() as cur:
                cur.execute("SELECT pg_notify(%s, 's')", (self.channel,))
        except OperationalError:
            pass  # the thread stops within REAP_INTERVAL anyway
        thread.join(5)

    def _listen(self) -> None:
        conn: Connection[Any] | None = None
        next_tick = 0.0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = connect(self.conninfo)
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._heard = True
                    self._listening.set()
                    if self.listener is not None:
                        self.listener.wake_all()  # what was announced while not listening
                wait = REAP_INTERVAL
                if self._waiting():
                    wait = min(wait, max(0.05, self.next_due - time.time()))
                for note in conn.notifies(timeout=wait):
                    self._notified(note.payload)
                    if self._stop.is_set():
                        break
                if self._waiting() and not self._stop.is_set():
                    # A copy another process stored with a TTL (or a queue it declared with x-expires)
                    # announces nothing: while connections wait, what is due is expired here, on time
                    # (the deadlines are read again at least every second); its dead letters wake
                    # their consumers.
                    self.tick()
                if time.monotonic() >= next_tick and not self._stop.is_set():
                    next_tick = time.monotonic() + REAP_INTERVAL
                    self.keep_owners_alive()
                    self.reap()
                    self._check_floors()
            except Exception as exc:  # wake-ups, reaping and keep-alives must go on, whatever failed
                if not isinstance(exc, (psycopg.Error, KelpError)):  # not the server going away: a defect
                    logger.exception("postgresql %s: the listener failed; it listens again", self.where)
                self._forget_floors()
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.2)
        self._forget_floors()
        if conn is not None:
            conn.close()
        self._listening.set()

    def _waiting(self) -> bool:
        """Whether some connection of this process waits for messages."""
        return self.listener is not None and bool(self.listener.waiting)

    def _notified(self, payload: str) -> None:
        # Any role that may connect to the database may NOTIFY on the channel: what kelp did not write is
        # ignored (logged), never fatal to this thread.
        kind, _, rest = payload.partition(":")
        if kind == "r":
            row_id, _, queue = rest.partition(":")
            try:
                low = int(row_id)
            except ValueError:
                return self._ignored(payload)
            self.lower_floor(queue, low)
            if self.listener is not None:
                self.listener.wake((queue,))
        elif kind == "w":
            try:
                due = float(rest)
            except ValueError:
                return self._ignored(payload)
            self.next_due = min(self.next_due, due)
            if self.listener is not None:
                self.listener.wake_all()
        elif kind == "d":
            if not self._deleted(rest):
                return self._ignored(payload)
            with self._guard:
                self._floors.pop(rest, None)
            if self.listener is not None:
                self.listener.queues_deleted({rest})
        elif kind != "s":
            self._ignored(payload)
        return None

    def _ignored(self, payload: str) -> None:
        logger.warning(
            "postgresql %s: ignored an announcement kelp did not write: %.80r", self.where, payload
        )

    def _deleted(self, queue: str) -> bool:
        """Whether the consumers this process registered on ``queue`` are gone, as a queue's deletion
        leaves them (in the transaction that announced it). An announcement written by anyone else
        must not cancel the consumers of a queue that still exists."""
        own = self.own_owners()
        if not own:
            return True
        with self.cursor() as cur:
            return not self.one(
                cur,
                "SELECT EXISTS (SELECT 1 FROM {s}.consumers WHERE queue = %s AND connection = ANY(%s))",
                queue,
                own,
            )

    # --- owners ---------------------------------------------------------------------------------------

    def reap(self) -> None:
        """Let go of the owners whose database session ended (killed, crashed, cut off); tell this
        process's own such owners (another process may have let go of them first)."""
        own = self.own_owners()
        alive: list[Any] = []
        with self.cursor() as cur:
            # PostgreSQL shows another role's sessions without their start time (NULL): those are
            # matched by pid and name instead (a reused pid has another name).
            dead = self.rows(
                cur,
                "SELECT id FROM {s}.connections c WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
                "WHERE a.pid = c.pid AND (a.backend_start = c.started OR (a.backend_start IS NULL "
                f"AND a.application_name = {session_name('c.id')})))",
                self.name,
            )
            if own:
                alive = self.rows(
                    cur,
                    "SELECT c.id FROM {s}.connections c JOIN pg_stat_activity a "
                    "ON a.pid = c.pid AND a.backend_start = c.started WHERE c.id = ANY(%s)",
                    own,
                )
            # Copies claimed by an owner that never was (a row written from outside kelp): every owner's
            # row is committed before its first claim and deleted with its claims let go.
            orphans = [row[0] for row in self.rows(cur, _ORPHANS)]
        if orphans:
            with self.cursor() as cur, cur.connection.transaction():
                released = self.rows(
                    cur,
                    "UPDATE {s}.messages m SET owner = NULL, redelivered = true WHERE owner = ANY(%s) AND "
                    "NOT EXISTS (SELECT 1 FROM {s}.connections c WHERE c.id = m.owner) RETURNING queue, id",
                    orphans,
                )
                self.notify_ready(cur, released)
        if dead:
            self.drop_owners([row[0] for row in dead])
        lost = set(own) - {row[0] for row in alive}
        if lost:
            self.owners_lost(lost)

    @abc.abstractmethod
    def own_owners(self) -> list[int]:
        """This process's owners (see the store)."""

    @abc.abstractmethod
    def owners_lost(self, owners: Collection[int]) -> None:
        """This process's ``owners`` lost their database sessions (see the store)."""

    @abc.abstractmethod
    def keep_owners_alive(self) -> None:
        """Keep this process's owner sessions from looking idle to the server (see the store)."""

    def drop_owners(self, owners: list[int]) -> None:
        """The owners are gone: their copies go back (redelivered), their consumers and exclusive queues
        go away, their rows too."""
        with self.cursor() as cur, cur.connection.transaction():
            # Each owner once: another process may be dropping it too.
            found = self.rows(cur, "DELETE FROM {s}.connections WHERE id = ANY(%s) RETURNING id", owners)
            owners = [row[0] for row in found]
            released = self.rows(
                cur,
                "UPDATE {s}.messages SET owner = NULL, redelivered = true WHERE owner = ANY(%s) "
                "RETURNING queue, id",
                owners,
            )
            self.notify_ready(cur, released)
            left = self.rows(
                cur, "DELETE FROM {s}.consumers WHERE connection = ANY(%s) RETURNING queue", owners
            )
            empty = self.consumers_left(cur, {row[0] for row in left})
            exclusive = self.rows(cur, "SELECT name FROM {s}.queues WHERE exclusive_owner = ANY(%s)", owners)
        self.delete_queues({*empty, *(row[0] for row in exclusive)})

    # --- floors ---------------------------------------------------------------------------------------

    def floor(self, queue: str) -> tuple[int, int] | None:
        """``(floor, times lowered)`` of the queue, or None to claim from its head."""
        queue_def = self.topology().queues.get(queue)
        if not self._heard or queue_def is None or queue_def.args.max_priority:
            return None
        with self._guard:
            floor = self._floors.setdefault(queue, [0, 0])
            return floor[0], floor[1]

    def raise_floor(self, queue: str, seen: tuple[int, int], row_id: int) -> None:
        """A claim that started at ``seen`` took copies up to ``row_id``."""
        with self._guard:
            floor = self._floors.get(queue)
            if floor is not None and floor[1] == seen[1]:  # not lowered meanwhile
                floor[0] = max(floor[0], row_id + 1)

    def lower_floor(self, queue: str, row_id: int) -> None:
        with self._guard:
            floor = self._floors.get(queue)
            if floor is not None:
                floor[0] = min(floor[0], row_id)
                floor[1] += 1

    def _check_floors(self) -> None:
        with self._guard:
            floors = [(queue, floor[0]) for queue, floor in self._floors.items()]
        for queue, low in floors:
            with self.cursor() as cur:
                # Claims above a floor take priority 0 only (a queue with floors has no priorities): a
                # ready row of another priority was written from outside kelp, and would stay for ever.
                found, foreign = self.rows(
                    cur,
                    f"SELECT (SELECT min(id) FROM {{s}}.messages WHERE queue = %s AND id < %s AND {READY}), "
                    "EXISTS (SELECT 1 FROM {s}.messages WHERE queue = %s AND priority > 0 AND owner IS NULL) "
                    "OR EXISTS (SELECT 1 FROM {s}.messages WHERE queue = %s AND priority < 0 "
                    "AND owner IS NULL)",
                    queue,
                    low,
                    queue,
                    queue,
                )[0]
            if foreign:
                self.take_foreign_priorities(queue)
            if found is not None:
                self.lower_floor(queue, found)
                if self.listener is not None:
                    self.listener.wake((queue,))

    @abc.abstractmethod
    def take_foreign_priorities(self, queue: str) -> None:
        """Take the ready copies of ``queue`` whose priority is not 0 out of it, as malformed (see the
        store)."""

    def _forget_floors(self) -> None:
        with self._guard:
            self._heard = False
            self._floors.clear()
