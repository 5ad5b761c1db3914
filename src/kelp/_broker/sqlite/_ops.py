"""The message operations of the sqlite store, each run inside one write transaction (:class:`Tx`).

:class:`Tx` itself (the topology snapshot it sees, the rows it inserts, the ready counts), storing rows,
publishing (routing through the topology snapshot and :mod:`kelp.routing`, queue limits, TTL), and
group-committed acks and releases. Claiming, getting and rejecting live in :mod:`._deliveries`,
declarations in :mod:`._declare`, dead-lettering in :mod:`._dead_letter`,
rows written from outside kelp in :mod:`._repair`. They keep no state of their own; the store decides
when they run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kelp._broker.queue_args import (
    QueueArgs,
    QueueDef,
    expiration_ms,
    tag,
)
from kelp._broker.sqlite import _dead_letter, _declare, _delayed
from kelp._broker.sqlite._codec import encode
from kelp._broker.sqlite._schema import TOMBSTONE_OWNER
from kelp._broker.sqlite._topology import LOG_KEEP, Topology, refresh_topology
from kelp._envelope import Envelope, is_persistent

if TYPE_CHECKING:
    from kelp._broker.sqlite._state import StoreState

__all__ = ["Tx"]

new_tag = tag

# A message row is its *shape* - these columns, the same for every message a producer sends to a queue -
# and its body. Every value is of a type the sqlite3 module binds without its adaptation protocol (str,
# int, float, bytearray: see blob()); no headers is ''.
_SHAPE = "queue, priority, properties, headers, exchange, routing_key, persistent"
Shape = tuple[str, int, str, str, str, str, int]
# A shape, a body and the topology version the row was routed at: the parameters of INSERT_IF_CURRENT.
Row = tuple[str, int, str, str, str, str, int, bytes | bytearray, int]
# A run of rows of one shape is stored by one statement per chunk that binds the shape once and each
# body once: one sqlite3_step, run without the GIL, inserting in the order of the VALUES rows, which keeps
# message ids in publish order. Power-of-two chunk sizes: a run takes one statement per 1,024 rows and at
# most ten more, from eleven cached statements.
_CHUNKS = tuple(1 << bit for bit in range(10, -1, -1))
_INSERT_RUN = {
    size: f"INSERT INTO messages ({_SHAPE}, body) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, column1 FROM (VALUES "
    + ", ".join(["(?)"] * size)
    + ")"
    for size in _CHUNKS
}
# One row, stored only if the topology is still at the version it was routed against (the last
# parameter): a single statement, so SQLite commits it on its own (autocommit, no BEGIN) - the lean path
# of a persistent publish. The statement holds the write lock from its start, so the check and the insert
# are one atomic step. The row is fresh: the next fold puts it in the ready index (_schema.READY_INDEX).
INSERT_IF_CURRENT = (
    f"INSERT INTO messages ({_SHAPE}, body, fresh) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1 "
    "WHERE (SELECT value FROM meta WHERE key='topology') = ?9"
)
# One row and its expiry time, for messages with a TTL (stored one statement each).
_INSERT_TIMED = f"INSERT INTO messages ({_SHAPE}, body, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Bodies up to this size are copied into a bytearray for binding (see blob()).
_BLOB_COPY_MAX = 4096


_BEGIN = (
    "SELECT value, EXISTS (SELECT 1 FROM messages WHERE expires_at <= ?1 AND owner IS NULL) "
    "OR EXISTS (SELECT 1 FROM delayed WHERE due <= ?1), "
    "(SELECT max(id) FROM messages) > (SELECT value FROM meta WHERE key='ready_mark') "
    "FROM meta WHERE key='topology'"
)
# The ready counts in arrears (see _schema._READY_COUNTS): the rows above the mark, by id range.
_MARK_TOP = "SELECT value, (SELECT max(id) FROM messages) FROM meta WHERE key='ready_mark'"
_ABOVE_MARK = (
    "SELECT queue, count(*), total(length(body)) FROM messages "
    "WHERE id > ? AND id <= ? AND owner IS NULL GROUP BY queue"
)
_UNFRESH = "UPDATE messages SET fresh = NULL WHERE id > ? AND id <= ? AND fresh IS NOT NULL"
_COUNT = (
    "UPDATE queue_ready SET count = count + ?1, bytes = bytes + ?2, published = published + ?1 "
    "WHERE queue = ?3"
)
_DROP_TOMBSTONES = f"DELETE FROM messages WHERE owner = {TOMBSTONE_OWNER} AND id < ?"
# Settling a set of ids in one statement: the ids travel as one JSON array.
_ACK = "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND owner=? RETURNING queue"
_ACKED = "UPDATE queue_ready SET acked = acked + ? WHERE queue = ?"
_RELEASE = (
    "UPDATE messages SET owner=NULL, redelivered=1 WHERE id IN (SELECT value FROM json_each(?)) AND owner=?"
)


class Tx:
    """One write transaction: the connection, its clock, the topology it sees and what it changed."""

    __slots__ = (
        "db",
        "deleted_queues",
        "dirty",
        "held",
        "inserted",
        "loaded",
        "next_due",
        "now",
        "reloaded",
        "runs",
        "topo",
        "touched",
    )

    def __init__(self, store: StoreState, db: sqlite3.Connection, now: float) -> None:
        self.db = db
        self.now = now
        self.topo: Topology = store._topo
        self.dirty = False
        self.reloaded = False
        self.loaded = False  # the topology version was read in this transaction: the snapshot is current
        self.inserted = False  # rows inserted since the ready counts were last brought up to date
        self.runs: list[tuple[Shape, list[bytes | bytearray]]] = []  # rows to insert, in order
        self.touched: set[str] = set()
        self.deleted_queues: set[str] = set()
        self.next_due = float("inf")
        self.held = False  # a delayed message was stored (waiting connections must learn its due time)

    def refresh(self) -> None:
        """Reload the topology if any process changed it since the snapshot."""
        version = self.db.execute("SELECT value FROM meta WHERE key='topology'").fetchone()[0]
        self._load(version)

    def begin(self) -> None:
        """First thing in a transaction: refresh the topology, expire what is due (one query when nothing
        is: each statement is a GIL round trip for a thread committing beside a busy one)."""
        version, expired, uncounted = self.db.execute(_BEGIN, (self.now,)).fetchone()
        if uncounted:
            fold_ready(self.db)
        self._load(version)
        if expired or self.topo.has_expiring_queues:
            _declare.tick(self)

    def _load(self, version: int) -> None:
        if version != self.topo.version:
            self.topo = refresh_topology(self.db, self.topo, version)
            self.reloaded = True
        self.dirty = False
        self.loaded = True

    def current(self) -> Topology:
        if self.dirty:
            self.refresh()
        return self.topo

    def bump(
        self, entity: str = "*", name: str = "", binding: tuple[str, str, str, str] | None = None
    ) -> None:
        """Record a topology change: a new version, and what changed at it (an ``entity`` of that
        ``name``, or for a binding its source ``name`` and ``(kind, destination, routing_key,
        arguments text)``) so that other snapshots catch up by re-reading only that."""
        db = self.db
        version = db.execute(
            "UPDATE meta SET value = value + 1 WHERE key='topology' RETURNING value"
        ).fetchone()[0]
        db.execute(
            "INSERT OR REPLACE INTO topology_log VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version, entity, name, *(binding or (None, None, None, None))),
        )
        db.execute("DELETE FROM topology_log WHERE version <= ?", (version - LOG_KEEP,))
        self.dirty = True

    def add(self, shape: Shape, body: bytes | bytearray) -> None:
        """Queue one row for insertion (with the other rows, by flush_rows)."""
        run = run_for(self.runs, shape)
        if run is None:
            self.runs.append((shape, [body]))
        else:
            run[1].append(body)

    def add_run(self, shape: Shape, bodies: list[bytes | bytearray]) -> None:
        """Queue rows of one shape (``bodies`` is copied, not kept)."""
        run = run_for(self.runs, shape)
        if run is None:
            self.runs.append((shape, list(bodies)))
        else:
            run[1].extend(bodies)

    def flush_rows(self) -> None:
        """Insert the queued rows."""
        if self.runs:
            db = self.db
            for shape, bodies in self.runs:
                insert_run(db, shape, bodies)
            self.runs.clear()
            self.inserted = True

    def count_ready(self) -> None:
        """Bring the ready counts up to date with the rows this transaction inserted."""
        if self.inserted:
            fold_ready(self.db)
            self.inserted = False


def _by_owner(pairs: list[tuple[int, int]]) -> list[tuple[str, int]]:
    ids: dict[int, list[str]] = {}
    for message_id, owner in pairs:
        ids.setdefault(owner, []).append(str(message_id))
    return [("[" + ",".join(found) + "]", owner) for owner, found in ids.items()]


def ack_rows(db: sqlite3.Connection, pairs: list[tuple[int, int]]) -> None:
    """Delete acked messages, given as (message id, owner connection): one statement per owner, and one
    per queue that counts its acks."""
    acked: dict[str, int] = {}
    for ids, owner in _by_owner(pairs):
        for (queue,) in db.execute(_ACK, (ids, owner)):
            acked[queue] = acked.get(queue, 0) + 1
    db.executemany(_ACKED, [(count, queue) for queue, count in acked.items()])


def release_rows(db: sqlite3.Connection, pairs: list[tuple[int, int]]) -> None:
    """Return messages, given as (message id, owner connection), to their queue, flagged redelivered."""
    for ids, owner in _by_owner(pairs):
        db.execute(_RELEASE, (ids, owner))


def blob(body: bytes) -> bytes | bytearray:
    """A body in the form the sqlite3 module binds cheapest. It binds str, int, float and bytearray as they
    are but passes bytes (and None and bool) through its adaptation protocol - registry and attribute
    lookups, an exception formatted and discarded - about 0.5 us a value, more than copying a small body."""
    return bytearray(body) if len(body) <= _BLOB_COPY_MAX else body


#: How many runs back a row may join a run of its shape (rows fanned out to several queues alternate).
LOOK_BACK = 8


def run_for(runs: Sequence[tuple[Any, ...]], shape: Shape, at: int = 0) -> Any:
    """The run among the last LOOK_BACK of ``runs`` that a row of ``shape`` can join without changing the
    order of its queue (no later run holds that queue's rows), or None. ``runs[i][at]`` is a run's shape;
    a shape of None is a run of items, which may hold any queue's."""
    name = shape[0]
    for index in range(len(runs) - 1, max(-1, len(runs) - 1 - LOOK_BACK), -1):
        run = runs[index]
        found = run[at]
        if found == shape:
            return run
        if found is None or found[0] == name:
            return None
    return None


def insert_run(db: sqlite3.Connection, shape: Shape, bodies: list[bytes | bytearray]) -> None:
    """Insert one row per body, all of ``shape``, in order, a chunk per statement."""
    start, total = 0, len(bodies)
    for size in _CHUNKS:
        sql = _INSERT_RUN[size]
        while total - start >= size:
            db.execute(sql, [*shape, *bodies[start : start + size]])
            start += size


def nothing(tx: Tx) -> None:
    return None


# --- counting ------------------------------------------------------------------------------------------


def fold_ready(db: sqlite3.Connection) -> None:
    """Count the ready rows above the ready mark into their queues' counts, put the fresh ones among them
    into the ready index, and move the mark to the last id (see _schema._READY_COUNTS and _FRESH): a
    range of ids, so O(rows inserted since), not O(queue depth)."""
    mark, top = db.execute(_MARK_TOP).fetchone()
    if top is None or top <= mark:
        return
    counts = db.execute(_ABOVE_MARK, (mark, top)).fetchall()
    db.executemany(_COUNT, [(count, int(size), name) for name, count, size in counts])
    db.execute(_UNFRESH, (mark, top))
    db.execute("UPDATE meta SET value=? WHERE key='ready_mark'", (top,))
    db.execute(_DROP_TOMBSTONES, (top,))  # the row at the mark keeps the ids now


# --- time ----------------------------------------------------------------------------------------------


def touch(tx: Tx, queue: QueueDef) -> None:
    if queue.args.expires is not None:
        tx.db.execute("UPDATE queues SET last_used=? WHERE name=?", (tx.now, queue.name))
        tx.next_due = min(tx.next_due, tx.now + queue.args.expires / 1000)


# --- publishing ----------------------------------------------------------------------------------------


def publish(tx: Tx, envelopes: Sequence[Envelope]) -> tuple[list[Envelope], list[tuple[Envelope, str]]]:
    """Route and store each envelope; return (unroutable mandatory envelopes, (envelope, queue) refused)."""
    returned: list[Envelope] = []
    refused: list[tuple[Envelope, str]] = []
    for envelope in envelopes:
        targets = tx.current().route(envelope.exchange, envelope.routing_key, envelope.headers)
        if not targets:
            if envelope.mandatory:
                returned.append(envelope)
            continue
        properties = envelope.properties
        ttl = expiration_ms(properties)
        props = encode(properties)
        headers = encode(envelope.headers) if envelope.headers else ""
        persistent = is_persistent(properties)
        if envelope.due is not None:
            for name in targets:
                _delayed.hold(tx, name, envelope, props, headers, persistent, ttl)
            continue
        for name in targets:
            if not enqueue(tx, name, envelope, props, headers, persistent, ttl, tx.now):
                refused.append((envelope, name))
    return returned, refused


def _full(args: QueueArgs, count: int, size: int) -> bool:
    return (args.max_length is not None and count > args.max_length) or (
        args.max_length_bytes is not None and size > args.max_length_bytes
    )


def ready_size(tx: Tx, name: str) -> tuple[int, int]:
    """Ready messages of the queue and their bytes, as the schema keeps them: O(1)."""
    tx.count_ready()
    row = tx.db.execute("SELECT count, bytes FROM queue_ready WHERE queue=?", (name,)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def enqueue(
    tx: Tx,
    name: str,
    envelope: Envelope,
    props: str,
    headers: str,
    persistent: bool,
    ttl: int | None,
    published: float,
) -> bool:
    """Store one copy of the message in queue ``name``; False if the queue refused it (x-overflow)."""
    queue = tx.current().queues.get(name)
    if queue is None:
        return True  # deleted since the message was routed
    args = queue.args
    if args.message_ttl is not None:
        ttl = args.message_ttl if ttl is None else min(ttl, args.message_ttl)
    expires = None if ttl is None else published + ttl / 1000
    priority = 0
    if args.max_priority:
        value = envelope.properties.get("priority") or 0
        priority = min(max(value, 0), args.max_priority) if isinstance(value, int) else 0
    body = blob(envelope.body)
    shape = (name, priority, props, headers, envelope.exchange, envelope.routing_key, 1 if persistent else 0)
    if expires is not None and expires < tx.next_due:
        tx.next_due = expires
    tx.touched.add(name)
    if not args.bounded and expires is None:
        tx.add(shape, body)
        return True
    tx.flush_rows()
    if not args.bounded:
        tx.db.execute(_INSERT_TIMED, (*shape, body, expires))
        tx.inserted = True
        return True
    count, size = ready_size(tx, name)
    if _full(args, count + 1, size + len(envelope.body)):
        if args.overflow != "drop-head":
            if args.overflow == "reject-publish-dlx":
                _dead_letter.dead_letter_message(
                    tx,
                    queue,
                    envelope.body,
                    envelope.properties,
                    envelope.headers,
                    envelope.exchange,
                    envelope.routing_key,
                    "maxlen",
                )
            return False
        _insert_one(tx, shape, body, expires)
        _drop_head(tx, queue)
    else:
        _insert_one(tx, shape, body, expires)
    return True


def _insert_one(tx: Tx, shape: Shape, body: bytes | bytearray, expires: float | None) -> None:
    tx.inserted = True
    if expires is None:
        tx.db.execute(_INSERT_RUN[1], (*shape, body))
    else:
        tx.db.execute(_INSERT_TIMED, (*shape, body, expires))


def _drop_head(tx: Tx, queue: QueueDef) -> None:
    db = tx.db
    while True:
        count, size = ready_size(tx, queue.name)
        if not count or not _full(queue.args, count, size):
            return
        row = db.execute(
            "SELECT id, body, properties, headers, exchange, routing_key FROM messages "
            "WHERE queue=? AND owner IS NULL AND fresh IS NULL ORDER BY priority DESC, id LIMIT 1",
            (queue.name,),
        ).fetchone()
        db.execute("DELETE FROM messages WHERE id=?", (row[0],))
        _dead_letter.dead_letter_row(tx, queue, row[1], row[2], row[3], row[4], row[5], "maxlen")
