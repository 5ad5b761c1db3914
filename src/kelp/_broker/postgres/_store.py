"""The ``postgresql://`` store: kelp's storage protocol (:mod:`kelp._broker.core.store`) on PostgreSQL.

One store per (server, database, schema) per process, shared by its connections. Each kelp connection
is an *owner* with a database session of its own, registered in ``connections`` with its backend pid and
start time; its claims carry its id. When that session ends - the process closed it, was killed, or lost
the server - the owner is gone: every process with a kelp connection checks ``pg_stat_activity`` once a
second (``_listen``) and puts the dead owners' claimed copies back, flagged redelivered. Each owner
session is named (``application_name``) ``kelp <id> <schema>``, which a process connected as another
role can see where PostgreSQL hides the start time.

Messages: one row per routed copy (``_route``); a claim is one ``UPDATE ... FOR UPDATE SKIP LOCKED``
ordered by priority then id, so consumers in many processes never take the same row; an ack deletes the
row. Acks and claims do not wait for the WAL flush (``synchronous_commit`` off: losing one to a server
crash means a redelivery, never a loss); nor do publishes unless ``flush_publishes``. Expiry and the
waits of consumers are in ``_deadlines``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

from psycopg import Cursor

from kelp._broker.core import Session
from kelp._broker.core.store import Item, Unacked
from kelp._broker.postgres import _delayed, _foreign, _quarantine
from kelp._broker.postgres._counters import ACKED, DELIVERED, PUBLISHED
from kelp._broker.postgres._deadlines import Deadlines
from kelp._broker.postgres._foreign import Bad, top_priority
from kelp._broker.postgres._listen import READY, session_name
from kelp._broker.postgres._pipeline import Publisher
from kelp._broker.postgres._route import (
    ROW,
    STATEMENT_BYTES,
    Copy,
    columns,
    copies_of,
    dead_letter_rows,
    in_statements,
    insert_statement,
    store_copies,
    values,
    version_statement,
)
from kelp._broker.postgres._schema import ensure_schema
from kelp._envelope import Envelope
from kelp.exceptions import KelpError, MessageNacked, OperationalError

__all__ = ["PostgresStore", "store_for"]

T = TypeVar("T")
logger = logging.getLogger(__name__)
#: Acks are committed in batches: with the process's next claim, at ACK_BATCH, or ACK_DELAY seconds later.
ACK_BATCH = 500
ACK_DELAY = 0.05


class PostgresStore(Deadlines):
    def __init__(self, conninfo: str, schema: str, flush_publishes: bool = False) -> None:
        super().__init__(conninfo, schema, flush_publishes)
        self.session: Session[PostgresStore] = Session(self)
        self.insert_one = insert_statement(self.schema, self.channel, True, one=True)
        self.insert_many = insert_statement(self.schema, self.channel, True)
        self.hold_checked = _delayed.hold_statement(self.schema, self.channel, True)
        self.hold = _delayed.hold_statement(self.schema, self.channel, False)
        self.unrouted = version_statement(self.schema)
        self._acks: list[tuple[Any, int]] = []  # (row id, owner)
        self._ack_lock = threading.Lock()
        self._ack_timer: threading.Timer | None = None

    # --- owners -------------------------------------------------------------------------------------

    def connect(self) -> int:
        conn = self.open()
        try:
            with self.mapped():
                ensure_schema(conn, self.name)
                with conn.cursor() as cur:
                    # Named after its owner (see Listening.reap), in the statement that makes it visible.
                    owner = self.one(
                        cur,
                        "INSERT INTO {s}.connections (pid, started) SELECT pid, backend_start "
                        "FROM pg_stat_activity WHERE pid = pg_backend_pid() "
                        f"RETURNING id, set_config('application_name', {session_name('id')}, false)",
                        self.name,
                    )
        except BaseException:
            conn.close()
            raise
        with self._guard:
            self._owners[owner] = (conn, threading.Lock())
        self.start_listening()
        return int(owner)

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        try:
            if self.owner_alive(owner):  # else its session is gone: whoever reaps it lets go of its copies
                self.flush_acks()
                self.flush_counts()
                self.drop_owners([owner])
        except OperationalError:
            pass  # the server is gone: its session with it; other processes (or its restart) let go
        finally:
            conn = self.forget_owner(owner)
            with self._guard:
                last = not self._owners
            if conn is not None:
                conn.close()
            if last:
                self.stop_listening()
                self.close_pool()
                with self._guard:
                    again = bool(self._owners)  # a connection opened meanwhile needs the listener
                if again:
                    self.start_listening()

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        if not self.owner_alive(owner):
            return  # its session is gone: whoever reaps it drops its consumers and lets go of its copies
        self.flush_acks()
        with self.cursor() as cur, cur.connection.transaction():
            left = self.rows(
                cur,
                "DELETE FROM {s}.consumers WHERE connection = %s AND channel = %s RETURNING queue",
                owner,
                channel,
            )
            empty = self.consumers_left(cur, {row[0] for row in left})
            self.release(cur, owner, unacked)
        self.delete_queues(empty)

    def release(self, cur: Cursor[Any], owner: int, unacked: Sequence[Unacked]) -> None:
        """The owner's copies are ready again, flagged redelivered, at their places (their ids). Copies
        it no longer holds (its session ended and they went back) are left as they are."""
        if unacked:
            released = self.rows(
                cur,
                "UPDATE {s}.messages SET owner = NULL, redelivered = true WHERE id = ANY(%s) AND owner = %s "
                "RETURNING queue, id",
                [u.ref for u in unacked],
                owner,
            )
            self.notify_ready(cur, released)

    # --- messages -----------------------------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope], pipe: Publisher | None = None) -> list[Envelope]:
        """Route and store ``envelopes``. With ``pipe`` (the connection's pipelined publisher), a batch
        that one checked statement stores - no bounded queue, no mandatory message, not both delayed and
        ready copies, under STATEMENT_BYTES - is sent there without waiting (see ``_pipeline``); anything
        else waits for ``pipe``'s earlier publishes, then is stored here before this returns."""
        refused: list[Copy] = []
        while True:
            topo = self.topology()
            try:
                routed = [(e, copies_of(topo, e)) for e in envelopes]
            except Exception:
                self.forget_topology()
                if self.topology().version != topo.version:
                    continue  # routed on an old snapshot: route again on the current one
                raise
            copies = [c for e, cs in routed if e.due is None for c in cs]
            held = [
                (e.due, c, e.properties["message_id"]) for e, cs in routed if e.due is not None for c in cs
            ]
            for copy in copies:
                self.due(None if copy.ttl is None else copy.ttl / 1000)
            if held:
                self.due(max(0.0, min(due for due, _, _ in held) - time.time()))
            # A large fanout or batch is stored in several statements (in_statements), in one transaction.
            large = sum(len(e.body) * len(cs) for e, cs in routed) > STATEMENT_BYTES
            mandatory = any(e.mandatory for e in envelopes)
            if any(c.queue.args.bounded for c in copies) or (held and copies) or large:
                if pipe is not None:
                    pipe.settle()  # after the connection's earlier publishes
                stored: Counter[str] = Counter()
                with self.locked() as (cur, current):
                    if current is not topo:
                        continue
                    refused = store_copies(cur, self.schema, self.channel, topo, copies, stored)
                    for run in in_statements(held, lambda h: h[1].body) if held else ():
                        cur.execute(self.hold, _delayed.held_columns(run))
                self.count_all(PUBLISHED, stored)
            else:
                # Even a publish routed to no queue is checked against the topology counter: on an
                # old snapshot it would be dropped, missing a queue another process declared before it.
                if held:
                    statement = self.hold_checked
                    params = [*_delayed.held_columns(held), topo.version]
                    persistent = any(c.persistent for _, c, _ in held)
                    queues = [c.queue.name for _, c, _ in held]
                elif not copies and not mandatory:
                    statement, params, persistent, queues = self.unrouted, [topo.version], False, []
                elif len(copies) == 1:
                    statement, params = self.insert_one, [*values(copies[0]), topo.version]
                    persistent, queues = copies[0].persistent, [copies[0].queue.name]
                else:
                    statement, params = self.insert_many, [*columns(copies), topo.version]
                    persistent = any(c.persistent for c in copies)
                    queues = [c.queue.name for c in copies]
                if pipe is not None and not mandatory:
                    pipe.send(statement, params, topo.version, envelopes, [] if held else queues)
                    break
                if pipe is not None:
                    pipe.settle()  # a mandatory message's return must reach its publish: it waits
                if not self._checked(statement, params, persistent):
                    self.forget_topology()
                    continue
                if not held:
                    self.count_all(PUBLISHED, queues)
            break
        if refused:
            # Named, so that a batch published again after the topology changed (see _pipeline) reports
            # only the messages a full queue refused, not the ones it stored.
            of = {id(c): e for e, cs in routed for c in cs}
            envelopes = list({id(of[id(c)]): of[id(c)] for c in refused}.values())
            queues = sorted({c.queue.name for c in refused})
            raise MessageNacked(
                f"queue(s) {queues} full (x-overflow reject-publish): message not enqueued there",
                envelopes=envelopes,
            )
        return [e for e, cs in routed if not cs and e.mandatory]

    def _checked(self, statement: str, params: list[Any], persistent: bool) -> bool:
        """Run a statement stored only if the topology counter is still its last parameter; whether it
        was (see ``insert_statement``)."""
        with self.cursor() as cur:
            if self.flush_publishes and persistent:
                with cur.connection.transaction():
                    cur.execute("SET LOCAL synchronous_commit = on")
                    cur.execute(statement, params)
            else:
                cur.execute(statement, params)
            row = cur.fetchone()
        return row is not None and row[0] == params[-1]

    def cancel_delayed(self, message_id: str) -> int:
        """Drop the held copies of the delayed message ``message_id`` (committed); return how many."""
        with self.cursor() as cur:
            return _delayed.cancel_delayed(cur, self.schema, message_id)

    def claim(
        self, owner: int, plan: Sequence[tuple[Any, Sequence[tuple[Any, int]], int]], limit: int
    ) -> list[Any]:
        out: list[Any] = []
        bad: list[tuple[bool, Bad]] = []
        self.tick()

        def work(cur: Cursor[Any]) -> None:
            self.flush_acks(cur)
            left = limit
            for channel, rooms, channel_room in plan:
                for consumer, room in rooms:
                    n = min(room, channel_room, left)
                    if n <= 0:
                        break
                    items = self._claim_rows(cur, owner, consumer.queue, n, consumer.no_ack, bad, True)
                    if items:
                        out.append((channel, consumer, items))
                        channel_room -= len(items)
                        left -= len(items)

        self._owner(owner, work)
        if bad:
            self._quarantine(owner, bad)
        for _, consumer, items in out:
            self.count(DELIVERED, consumer.queue, len(items))
        return out

    def _claim_rows(
        self,
        cur: Cursor[Any],
        owner: int,
        queue: str,
        n: int,
        no_ack: bool,
        bad: list[tuple[bool, Bad]],
        floor: bool = False,
    ) -> list[Item]:
        """Claim up to ``n`` ready copies of ``queue`` (``no_ack``: take them); the malformed ones are
        added to ``bad``, for the caller to quarantine once the owner's session is free."""
        known = self.floor(queue) if floor else None
        where = "queue = %s AND " if known is None else "queue = %s AND priority = 0 AND id >= %s AND "
        params = [queue] if known is None else [queue, known[0]]
        pick = f"SELECT id FROM {{s}}.messages WHERE {where}{READY} ORDER BY priority DESC, id LIMIT %s"
        pick += " FOR UPDATE SKIP LOCKED"
        # id = ANY(ARRAY(...)): the rows picked are updated by their primary key (a join back to the table
        # can be planned as a scan of it).
        if no_ack:
            text = f"DELETE FROM {{s}}.messages WHERE id = ANY(ARRAY({pick})) RETURNING *"
            rows = self.rows(cur, text, *params, n, plan=True)
        else:
            text = f"UPDATE {{s}}.messages SET owner = %s WHERE id = ANY(ARRAY({pick})) RETURNING *"
            rows = self.rows(cur, text, owner, *params, n, plan=True)
        rows.sort(key=lambda r: (-r[2], r[0]))
        if known is not None and rows:
            self.raise_floor(queue, known, rows[-1][0])
        # *: id, queue, priority, body, properties, headers, exchange, routing_key, redelivered, ...
        items, malformed = _foreign.read(rows, top_priority(self.topology().queues.get(queue)))
        if malformed:
            # A priority may look out of range on an old snapshot: judged again on the current one.
            self.forget_topology()
            again, malformed = _foreign.read(
                [row for row, _ in malformed], top_priority(self.topology().queues.get(queue))
            )
            items.extend(again)
            bad.extend((no_ack, b) for b in malformed)
        return items

    def _quarantine(self, owner: int, bad: Sequence[tuple[bool, Bad]]) -> None:
        """Take the owner's malformed claimed copies out of their queues (see ``_quarantine``)."""
        stored: Counter[str] = Counter()
        try:
            with self.locked() as (cur, topo):
                _quarantine.take_claimed(cur, self.schema, self.channel, topo, owner, bad, stored)
        except KelpError:
            # They stay claimed by the owner and return to their queues when it closes.
            logger.exception("postgresql %s: could not take malformed messages out of queues", self.where)
            return
        self.count_all(PUBLISHED, stored)

    def take_foreign_priorities(self, queue: str) -> None:
        stored: Counter[str] = Counter()
        with self.locked() as (cur, topo):
            _quarantine.take_foreign_priorities(cur, self.schema, self.channel, topo, queue, stored)
        self.count_all(PUBLISHED, stored)

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        self.tick()
        self.check_queue(owner, queue)

        bad: list[tuple[bool, Bad]] = []

        def work(cur: Cursor[Any]) -> tuple[Item, int] | None:
            items = self._claim_rows(cur, owner, queue, 1, no_ack, bad)
            if not items:
                return None
            return items[0], int(
                self.one(cur, f"SELECT count(*) FROM {{s}}.messages WHERE queue = %s AND {READY}", queue)
            )

        while True:
            found = self._owner(owner, work)
            if not bad:
                break
            # A malformed copy: it leaves the queue, and the next one is taken.
            self._quarantine(owner, bad)
            bad.clear()
            if found is not None:
                break
        if found is not None:
            self.count(DELIVERED, queue)
        return found

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """Delete the copies (in a batch, soon) if the owner still holds them. Raises OperationalError
        if its session is known lost: the copies went back to their queues, maybe to other consumers."""
        if owner in self._lost:
            raise OperationalError(f"postgresql {self.where}: the connection's session was lost: not acked")
        self.count_all(ACKED, [u.queue for u in unacked])
        with self._ack_lock:
            self._acks.extend((u.ref, owner) for u in unacked)
            if len(self._acks) < ACK_BATCH:
                if self._ack_timer is None:
                    self._ack_timer = threading.Timer(ACK_DELAY, self.flush_acks)
                    self._ack_timer.daemon = True
                    self._ack_timer.start()
                return
        self.flush_acks()

    def flush_acks(self, cur: Cursor[Any] | None = None) -> None:
        """Delete the acked rows still held by the owners that acked them (one whose session ended lost
        its claims: the copy may be another consumer's now), with ``cur`` when given: the caller's
        session, before its own work."""
        with self._ack_lock:
            acks, self._acks = self._acks, []
            timer, self._ack_timer = self._ack_timer, None
        if timer is not None:
            timer.cancel()
        if not acks:
            return
        by_owner: dict[int, list[Any]] = {}
        for ref, owner in acks:
            by_owner.setdefault(owner, []).append(ref)
        text = "DELETE FROM {s}.messages WHERE id = ANY(%s) AND owner = %s"
        try:
            if cur is not None:
                for owner, ids in by_owner.items():
                    self.rows(cur, text, ids, owner)
                return
            with self.cursor() as own:
                for owner, ids in by_owner.items():
                    self.rows(own, text, ids, owner)
        except KelpError:
            pass  # the session or the schema is gone: those copies come back redelivered, never lost

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        self.flush_acks()
        if not unacked:
            return
        if requeue:
            with self.cursor() as cur, cur.connection.transaction():
                self.release(cur, owner, unacked)
            return
        stored: Counter[str] = Counter()
        with self.locked() as (cur, topo):
            found = self.rows(
                cur,
                f"DELETE FROM {{s}}.messages WHERE id = ANY(%s) AND owner = %s RETURNING {ROW}",
                [u.ref for u in unacked],
                owner,
            )
            order = {u.ref: i for i, u in enumerate(unacked)}
            found.sort(key=lambda r: order.get(r[0], 0))
            dead_letter_rows(cur, self.schema, self.channel, topo, found, "rejected", stored)
        self.count_all(PUBLISHED, stored)


_stores: dict[tuple[str, str, bool], PostgresStore] = {}
_stores_lock = threading.Lock()


def store_for(conninfo: str, schema: str, flush_publishes: bool = False) -> PostgresStore:
    """The process's store for one database schema (created on first use)."""
    key = (conninfo, schema, flush_publishes)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store.pid != os.getpid():  # a forked child: the parent's is not its own
            store = _stores[key] = PostgresStore(conninfo, schema, flush_publishes)
        return store
