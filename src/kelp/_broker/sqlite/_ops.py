"""The operations of the sqlite store, each run inside one write transaction (:class:`Tx`).

These functions hold the broker rules as they apply to rows: routing (through the topology snapshot and
:mod:`kelp.routing`), queue limits, TTL, dead-lettering (through :func:`kelp._broker.queue_args.dead_letter`),
exclusive and auto-delete queues. They keep no state of their own; the store decides when they run.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kelp._broker.malformed import Malformed, as_text, malformed_tables, report_dropped
from kelp._broker.queue_args import (
    QueueArgs,
    binding_destination,
    check_exchange_redeclare,
    check_name,
    check_queue_redeclare,
    dead_letter,
    expiration_ms,
    generated_queue_name,
    tag,
)
from kelp._broker.sqlite._codec import decode, encode
from kelp._broker.sqlite._schema import TOMBSTONE_OWNER
from kelp._broker.sqlite._topology import LOG_KEEP, QueueDef, Topology, binding_key, refresh_topology
from kelp._envelope import Envelope, QueueInfo, QueueStats
from kelp.exceptions import (
    AccessRefused,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
    UsageError,
)
from kelp.routing import BindingTable, validate_exchange_type

if TYPE_CHECKING:
    from kelp._broker.sqlite._store import SqliteStore

__all__ = ["Tx", "Waker"]

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
# are one atomic step.
INSERT_IF_CURRENT = (
    f"INSERT INTO messages ({_SHAPE}, body) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 "
    "WHERE (SELECT value FROM meta WHERE key='topology') = ?9"
)
# One row and its expiry time, for messages with a TTL (stored one statement each).
_INSERT_TIMED = f"INSERT INTO messages ({_SHAPE}, body, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Bodies up to this size are copied into a bytearray for binding (see blob()).
_BLOB_COPY_MAX = 4096
_RETURNING = "RETURNING id, priority, body, properties, headers, exchange, routing_key, redelivered"
_HEAD = "SELECT id FROM messages WHERE queue=? AND owner IS NULL ORDER BY priority DESC, id LIMIT ?"
# Constant statements, built once: the sqlite3 statement cache is keyed by the SQL text.
_CLAIM_NO_ACK = f"DELETE FROM messages WHERE id IN ({_HEAD}) {_RETURNING}"
_UNCOUNT = "UPDATE queue_ready SET count = count - ?, bytes = bytes - ? WHERE queue = ?"
_CLAIM = (
    "UPDATE messages SET owner=?, claimed_at=?, delivery_count=delivery_count+1 "
    f"WHERE id IN ({_HEAD}) {_RETURNING}"
)


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
_COUNT = "UPDATE queue_ready SET count = count + ?, bytes = bytes + ? WHERE queue = ?"
_DROP_TOMBSTONES = f"DELETE FROM messages WHERE owner = {TOMBSTONE_OWNER} AND id < ?"
# Settling a set of ids in one statement: the ids travel as one JSON array.
_ACK = "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) AND owner=?"
_RELEASE = (
    "UPDATE messages SET owner=NULL, redelivered=1 WHERE id IN (SELECT value FROM json_each(?)) AND owner=?"
)


class Waker(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...


class Tx:
    """One write transaction: the connection, its clock, the topology it sees and what it changed."""

    __slots__ = (
        "db",
        "deleted_queues",
        "dirty",
        "held",
        "inserted",
        "next_due",
        "now",
        "reloaded",
        "runs",
        "topo",
        "touched",
    )

    def __init__(self, store: SqliteStore, db: sqlite3.Connection, now: float) -> None:
        self.db = db
        self.now = now
        self.topo: Topology = store._topo
        self.dirty = False
        self.reloaded = False
        self.inserted = False  # rows inserted since the ready counts were last brought up to date
        self.runs: list[tuple[Shape, list[bytes | bytearray]]] = []  # rows to insert, in order
        self.touched: set[str] = set()
        self.deleted_queues: set[str] = set()
        self.next_due = float("inf")
        self.held = False  # a delayed message was stored

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
            tick(self)

    def _load(self, version: int) -> None:
        if version != self.topo.version:
            self.topo = refresh_topology(self.db, self.topo, version)
            self.reloaded = True
        self.dirty = False

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
    """Delete acked messages, given as (message id, owner connection): one statement per owner."""
    for ids, owner in _by_owner(pairs):
        db.execute(_ACK, (ids, owner))


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


def _json(kind: str, arguments: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(arguments or {}), separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{kind} arguments cannot be stored: {exc}") from None


# --- counting ------------------------------------------------------------------------------------------


def fold_ready(db: sqlite3.Connection) -> None:
    """Count the ready rows above the ready mark into their queues' counts and move the mark to the last
    id (see _schema._READY_COUNTS): a range of ids, so O(rows inserted since), not O(queue depth)."""
    mark, top = db.execute(_MARK_TOP).fetchone()
    if top is None or top <= mark:
        return
    counts = db.execute(_ABOVE_MARK, (mark, top)).fetchall()
    db.executemany(_COUNT, [(count, int(size), name) for name, count, size in counts])
    db.execute("UPDATE meta SET value=? WHERE key='ready_mark'", (top,))
    db.execute(_DROP_TOMBSTONES, (top,))  # the row at the mark keeps the ids now


def ready_count(tx: Tx, name: str) -> int:
    """Ready messages of the queue (see _ready_size): O(1)."""
    return _ready_size(tx, name)[0]


def consumer_count(tx: Tx, name: str) -> int:
    count: int = tx.db.execute("SELECT count(*) FROM consumers WHERE queue=?", (name,)).fetchone()[0]
    return count


def queue_stats(tx: Tx) -> list[tuple[str, int, int, int]]:
    db = tx.db
    ready = dict(db.execute("SELECT queue, count FROM queue_ready"))
    unacked = dict(db.execute("SELECT queue, count(*) FROM messages WHERE owner IS NOT NULL GROUP BY queue"))
    consumers = dict(db.execute("SELECT queue, count(*) FROM consumers GROUP BY queue"))
    delayed = dict(db.execute("SELECT queue, count(*) FROM delayed GROUP BY queue"))
    return [
        QueueStats(
            name, ready.get(name, 0), unacked.get(name, 0), consumers.get(name, 0), delayed.get(name, 0)
        )
        for name in tx.current().queues
    ]


def next_deadline(db: sqlite3.Connection) -> float:
    """Wall-clock time of the next message expiry or queue expiry (inf: none)."""
    due = float("inf")
    row = db.execute(
        "SELECT expires_at FROM messages WHERE expires_at IS NOT NULL AND owner IS NULL "
        "ORDER BY expires_at LIMIT 1"
    ).fetchone()
    if row is not None:
        due = row[0]
    row = db.execute(
        "SELECT min(last_used + expires_ms / 1000.0) FROM queues WHERE expires_ms IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM consumers WHERE consumers.queue = queues.name)"
    ).fetchone()
    if row is not None and row[0] is not None:
        due = min(due, row[0])
    row = db.execute("SELECT due FROM delayed ORDER BY due LIMIT 1").fetchone()
    if row is not None:
        due = min(due, row[0])
    return float(due)


# --- time ----------------------------------------------------------------------------------------------


def tick(tx: Tx) -> None:
    """Expire what is due: ready messages past their TTL (dead-lettered) and unused queues past x-expires;
    move the delayed messages that are due into their queues."""
    db = tx.db
    promote(tx)
    rows = db.execute(
        "SELECT id, queue, body, properties, headers, exchange, routing_key FROM messages "
        "WHERE expires_at <= ? AND owner IS NULL ORDER BY queue, priority DESC, id",
        (tx.now,),
    ).fetchall()
    if rows:
        db.executemany("DELETE FROM messages WHERE id=?", [(row[0],) for row in rows])
        for _, name, body, props, headers, exchange, routing_key in rows:
            queue = tx.current().queues.get(name)
            if queue is not None and queue.args.dead_letter_exchange is not None:
                dead_letter_row(tx, queue, body, props, headers, exchange, routing_key, "expired")
    if tx.current().has_expiring_queues:
        expired = db.execute(
            "SELECT name FROM queues WHERE expires_ms IS NOT NULL AND last_used + expires_ms / 1000.0 <= ? "
            "AND NOT EXISTS (SELECT 1 FROM consumers WHERE consumers.queue = queues.name)",
            (tx.now,),
        ).fetchall()
        for (name,) in expired:
            delete_queue(tx, name)


# --- delayed messages ----------------------------------------------------------------------------------

_HOLD = (
    "INSERT INTO delayed (due, queue, message_id, body, properties, headers, exchange, routing_key, ttl_ms, "
    "persistent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DUE = (
    "SELECT id, due, queue, body, properties, headers, exchange, routing_key, ttl_ms, persistent "
    "FROM delayed WHERE due <= ? ORDER BY due, id LIMIT ?"
)
# The lean path of a persistent delayed publish to one queue: one autocommitted statement, stored only if
# the topology is still at the version it was routed against (the last parameter), as INSERT_IF_CURRENT.
HOLD_IF_CURRENT = (
    "INSERT INTO delayed (due, queue, message_id, body, properties, headers, exchange, routing_key, ttl_ms, "
    "persistent) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 "
    "WHERE (SELECT value FROM meta WHERE key='topology') = ?11"
)
#: The parameters of HOLD_IF_CURRENT.
HeldRow = tuple[float, str, Any, bytes | bytearray, str, str, str, str, Any, int, int]
#: Delayed messages one transaction moves at most (the rest go in the next, scheduled at once).
PROMOTE_MAX = 1000


def hold(
    tx: Tx, name: str, envelope: Envelope, props: str, headers: str, persistent: bool, ttl: int | None
) -> None:
    """Hold one copy of a delayed message for queue ``name`` until its due time."""
    due = envelope.due
    assert due is not None
    if name not in tx.current().queues:
        return  # deleted since the message was routed
    tx.db.execute(
        _HOLD,
        (
            due,
            name,
            envelope.properties.get("message_id"),
            blob(envelope.body),
            props,
            headers,
            envelope.exchange,
            envelope.routing_key,
            ttl,
            1 if persistent else 0,
        ),
    )
    tx.held = True
    if due < tx.next_due:
        tx.next_due = due


def promote(tx: Tx) -> None:
    """Move the delayed messages that are due into their queues, in due then publish order, each as a fresh
    publish whose TTL counts from its due time (length limits apply now, as to any publish)."""
    rows = tx.db.execute(_DUE, (tx.now, PROMOTE_MAX)).fetchall()
    if not rows:
        return
    tx.db.executemany("DELETE FROM delayed WHERE id=?", [(row[0],) for row in rows])
    for row_id, due, name, body, props, headers, exchange, routing_key, ttl, persistent in rows:
        try:
            body, properties, header_table = read_row(body, props, headers, exchange, routing_key)
        except Malformed as exc:  # written from outside kelp
            report_dropped("the sqlite delayed table", name, row_id, str(exc), "it was a delayed message")
            continue
        envelope = Envelope(body, properties, header_table, exchange, routing_key)
        enqueue(tx, name, envelope, props, headers or "", bool(persistent), ttl, due)
    if len(rows) == PROMOTE_MAX:
        tx.next_due = tx.now  # more are due: the next transaction moves them


_GENERATED_ID = re.compile(r"kd-([0-9a-f]{1,16})-[0-9a-f]+")


def cancel_delayed(tx: Tx, message_id: str) -> int:
    """Drop the held copies of a delayed message; return how many. An id kelp generated carries the due
    time (messaging.delayed_message_id): found through the due-time index; a user's through its own."""
    generated = _GENERATED_ID.fullmatch(message_id)
    if generated:
        due = int(generated[1], 16) / 1000
        sql = "DELETE FROM delayed WHERE due >= ? AND due < ? AND message_id = ?"
        count: int = tx.db.execute(sql, (due - 0.001, due + 0.002, message_id)).rowcount
        return count
    sql = "DELETE FROM delayed WHERE message_id = ? AND message_id NOT GLOB 'kd-*'"
    count = tx.db.execute(sql, (message_id,)).rowcount
    return count


def _touch(tx: Tx, queue: QueueDef) -> None:
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
        persistent = properties.get("delivery_mode") == 2
        if envelope.due is not None:
            for name in targets:
                hold(tx, name, envelope, props, headers, persistent, ttl)
            continue
        for name in targets:
            if not enqueue(tx, name, envelope, props, headers, persistent, ttl, tx.now):
                refused.append((envelope, name))
    return returned, refused


def _full(args: QueueArgs, count: int, size: int) -> bool:
    return (args.max_length is not None and count > args.max_length) or (
        args.max_length_bytes is not None and size > args.max_length_bytes
    )


def _ready_size(tx: Tx, name: str) -> tuple[int, int]:
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
    count, size = _ready_size(tx, name)
    if _full(args, count + 1, size + len(envelope.body)):
        if args.overflow != "drop-head":
            if args.overflow == "reject-publish-dlx":
                dead_letter_message(
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
        count, size = _ready_size(tx, queue.name)
        if not count or not _full(queue.args, count, size):
            return
        row = db.execute(
            "SELECT id, body, properties, headers, exchange, routing_key FROM messages "
            "WHERE queue=? AND owner IS NULL ORDER BY priority DESC, id LIMIT 1",
            (queue.name,),
        ).fetchone()
        db.execute("DELETE FROM messages WHERE id=?", (row[0],))
        dead_letter_row(tx, queue, row[1], row[2], row[3], row[4], row[5], "maxlen")


def read_row(body: Any, props: Any, headers: Any, exchange: Any, routing_key: Any) -> tuple[Any, ...]:
    """``(body, properties, headers)`` of a stored message; raises Malformed for a row kelp did not write
    (see :mod:`kelp._broker.malformed`)."""
    if type(body) is not bytes:
        if not isinstance(body, str):
            raise Malformed(f"the body is a {type(body).__name__}, not a BLOB")
        body = body.encode("utf-8", "surrogatepass")
    if type(exchange) is not str or type(routing_key) is not str:
        raise Malformed("the exchange or routing key is not text")
    return body, decode(props), decode(headers) if headers else {}


def dead_letter_row(
    tx: Tx, queue: QueueDef, body: Any, props: Any, headers: Any, exchange: Any, routing_key: Any, reason: str
) -> None:
    """:func:`dead_letter_message` for a message as stored; a malformed one is dead-lettered as
    :mod:`kelp._broker.malformed` describes."""
    if queue.args.dead_letter_exchange is None:
        return
    try:
        body, properties, header_table = read_row(body, props, headers, exchange, routing_key)
    except Malformed as exc:
        properties, header_table = malformed_tables(str(exc), {"properties": props, "headers": headers})
        body = _blob_of(body)
        exchange, routing_key = as_text(exchange), as_text(routing_key)
    dead_letter_message(tx, queue, body, properties, header_table, exchange, routing_key, reason)


def _blob_of(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return as_text(value).encode()


def quarantine(tx: Tx, connection_id: int, items: Sequence[tuple[bool, str, Any, str]]) -> None:
    """Take malformed messages out of their queues: ``(no_ack, queue, claimed row, problem)`` each.
    Dead-lettered (reason ``rejected``) when the queue has a dead-letter exchange, else dropped with an
    ERROR log; a row no longer held by the connection (released meanwhile) is left alone."""
    for no_ack, name, row, problem in items:
        message_id, _priority, body, props, headers, exchange, routing_key = row[:7]
        if not no_ack:
            deleted = tx.db.execute(
                "DELETE FROM messages WHERE id=? AND owner=?", (message_id, connection_id)
            ).rowcount
            if not deleted:
                continue
        _drop_malformed(tx, name, message_id, body, problem, props, headers, exchange, routing_key)


def _drop_malformed(
    tx: Tx,
    name: str,
    message_id: int,
    body: Any,
    problem: str,
    props: Any,
    headers: Any,
    exchange: Any,
    routing_key: Any,
) -> None:
    queue = tx.current().queues.get(name)
    if queue is None or queue.args.dead_letter_exchange is None:
        path = tx.db.execute("PRAGMA database_list").fetchone()[2]  # the file, for the log line
        report_dropped(path, name, message_id, problem)
        return
    properties, header_table = malformed_tables(problem, {"properties": props, "headers": headers})
    dead_letter_message(
        tx,
        queue,
        _blob_of(body),
        properties,
        header_table,
        as_text(exchange),
        as_text(routing_key),
        "rejected",
    )


def is_undecodable_text(exc: sqlite3.Error) -> bool:
    """True for the error sqlite3 raises reading a TEXT value that is not UTF-8."""
    return "Could not decode to UTF-8" in str(exc)


def repair_text(tx: Tx) -> None:
    """Take every message whose TEXT columns are not UTF-8 (written from outside kelp) out of its queue,
    as :func:`quarantine` does. A full scan: run only after reading such a row failed."""
    db = tx.db
    last = 0
    while True:
        db.text_factory = bytes
        try:
            rows = db.execute(
                "SELECT id, queue, body, properties, headers, exchange, routing_key FROM messages "
                "WHERE id > ? ORDER BY id LIMIT 1000",
                (last,),
            ).fetchall()
        finally:
            db.text_factory = str
        if not rows:
            return
        last = rows[-1][0]
        for message_id, name, body, props, headers, exchange, routing_key in rows:
            texts = (name, props, headers, exchange, routing_key)
            try:
                for text in texts:
                    if isinstance(text, bytes):
                        text.decode()
            except UnicodeDecodeError:
                db.execute("DELETE FROM messages WHERE id=?", (message_id,))
                _drop_malformed(
                    tx,
                    as_text(name),
                    message_id,
                    body,
                    "stored text is not UTF-8",
                    props,
                    headers,
                    exchange,
                    routing_key,
                )


def dead_letter_message(
    tx: Tx,
    queue: QueueDef,
    body: bytes,
    properties: Mapping[str, Any],
    headers: Mapping[str, Any],
    exchange: str,
    routing_key: str,
    reason: str,
) -> None:
    """Republish a message that left ``queue`` for ``reason`` to the queue's dead-letter exchange."""
    dlx = queue.args.dead_letter_exchange
    if dlx is None:
        return
    result = dead_letter(
        headers,
        properties,
        queue=queue.name,
        reason=reason,
        exchange=exchange,
        routing_key=routing_key,
        now=tx.now,
    )
    if result is None:
        return  # a dead-letter cycle: RabbitMQ drops the message too
    new_headers, new_properties = result
    target_key = queue.args.dead_letter_routing_key or routing_key
    topo = tx.current()
    if dlx and dlx not in topo.exchanges:
        return  # a missing dead-letter exchange drops the message, as in RabbitMQ
    targets = topo.route(dlx, target_key, new_headers)
    if not targets:
        return
    copy = Envelope(body, new_properties, new_headers, dlx, target_key)
    props, head = encode(new_properties), encode(new_headers)
    persistent = new_properties.get("delivery_mode") == 2
    for name in targets:
        enqueue(tx, name, copy, props, head, persistent, None, tx.now)


# --- exchanges -----------------------------------------------------------------------------------------


def declare_exchange(
    tx: Tx,
    name: str,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Mapping[str, Any] | None,
    passive: bool,
) -> None:
    existing = tx.current().exchanges.get(name)
    if passive:
        if existing is None:
            raise NotFound(f"no exchange '{name}' in vhost '/'")
        return
    check_name("exchange", name, passive)
    if existing is not None:
        check_exchange_redeclare(
            name,
            (existing.type, existing.durable, existing.auto_delete, existing.internal, existing.arguments),
            (type_, durable, auto_delete, internal, arguments),
        )
        return
    validate_exchange_type(type_)
    tx.db.execute(
        "INSERT INTO exchanges VALUES (?, ?, ?, ?, ?, ?)",
        (name, type_, int(durable), int(auto_delete), int(internal), _json("exchange", arguments)),
    )
    tx.bump("exchange", name)


def delete_exchange(tx: Tx, name: str, if_unused: bool) -> None:
    if not name or name.startswith("amq."):
        raise AccessRefused(f"operation not permitted on the default or 'amq.*' exchange '{name}'")
    exchange = tx.current().exchanges.get(name)
    if exchange is None:
        return
    if if_unused and len(exchange.table):
        raise PreconditionFailed(f"exchange '{name}' in use")
    _drop_exchange(tx, name)


def _drop_exchange(tx: Tx, name: str) -> None:
    db = tx.db
    db.execute("DELETE FROM exchanges WHERE name=?", (name,))
    db.execute("DELETE FROM bindings WHERE source=?", (name,))
    db.execute("DELETE FROM bindings WHERE kind='exchange' AND destination=?", (name,))
    tx.bump("exchange", name)


def _maybe_auto_delete_exchange(tx: Tx, name: str) -> None:
    row = tx.db.execute("SELECT auto_delete FROM exchanges WHERE name=?", (name,)).fetchone()
    if row is None or not row[0]:
        return
    if tx.db.execute("SELECT 1 FROM bindings WHERE source=? LIMIT 1", (name,)).fetchone() is None:
        _drop_exchange(tx, name)


# --- queues --------------------------------------------------------------------------------------------


def queue_for(tx: Tx, name: str, connection_id: int) -> QueueDef:
    queue = tx.current().queues.get(name)
    if queue is None:
        raise NotFound(f"no queue '{name}' in vhost '/'")
    _check_exclusive(queue, connection_id)
    return queue


def _check_exclusive(queue: QueueDef, connection_id: int) -> None:
    if queue.exclusive_owner is not None and queue.exclusive_owner != connection_id:
        raise ResourceLocked(
            f"cannot obtain exclusive access to locked queue '{queue.name}': it belongs to another connection"
        )


def declare_queue(
    tx: Tx,
    connection_id: int,
    name: str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any] | None,
    passive: bool,
) -> QueueInfo:
    if passive:
        queue = queue_for(tx, name, connection_id)
        return QueueInfo(queue.name, ready_count(tx, name), consumer_count(tx, name))
    if name:
        check_name("queue", name, passive)
    existing = tx.current().queues.get(name) if name else None
    if existing is not None:
        _check_exclusive(existing, connection_id)
        check_queue_redeclare(
            name,
            (
                existing.durable,
                existing.exclusive_owner is not None,
                existing.auto_delete,
                existing.arguments,
            ),
            (durable, exclusive, auto_delete, arguments),
        )
        _touch(tx, existing)
        return QueueInfo(name, ready_count(tx, name), consumer_count(tx, name))
    args = QueueArgs.parse(arguments)
    name = name or generated_queue_name()
    tx.db.execute(
        "INSERT INTO queues (name, durable, exclusive_owner, auto_delete, arguments, expires_ms, last_used) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            int(durable),
            connection_id if exclusive else None,
            int(auto_delete),
            _json("queue", arguments),
            args.expires,
            tx.now,
        ),
    )
    if args.expires is not None:
        tx.next_due = min(tx.next_due, tx.now + args.expires / 1000)
    tx.bump("queue", name)
    return QueueInfo(name, 0, 0)


def delete_queue_checked(tx: Tx, connection_id: int, name: str, if_unused: bool, if_empty: bool) -> int:
    queue = tx.current().queues.get(name)
    if queue is None:
        return 0
    _check_exclusive(queue, connection_id)
    if if_unused and consumer_count(tx, name):
        raise PreconditionFailed(f"queue '{name}' in use")
    if if_empty and ready_count(tx, name):
        raise PreconditionFailed(f"queue '{name}' not empty")
    return delete_queue(tx, name)


def delete_queue(tx: Tx, name: str) -> int:
    """Delete the queue, its messages (ready and unacked), bindings and consumers; return the ready count."""
    db = tx.db
    count = ready_count(tx, name)
    # Ready messages through the claim index, claimed ones through the owner index.
    db.execute("DELETE FROM messages WHERE queue=? AND owner IS NULL", (name,))
    db.execute("DELETE FROM messages WHERE owner IS NOT NULL AND queue=?", (name,))
    # Found through the due-time index, which covers the queue: the bodies are not read.
    db.execute(
        "DELETE FROM delayed WHERE id IN (SELECT id FROM delayed INDEXED BY delayed_due WHERE queue=?)",
        (name,),
    )
    db.execute("DELETE FROM queues WHERE name=?", (name,))
    db.execute("DELETE FROM consumers WHERE queue=?", (name,))
    sources = [
        source
        for (source,) in db.execute(
            "SELECT DISTINCT source FROM bindings WHERE kind='queue' AND destination=?", (name,)
        ).fetchall()
    ]
    db.execute("DELETE FROM bindings WHERE kind='queue' AND destination=?", (name,))
    tx.bump("queue", name)
    tx.deleted_queues.add(name)
    for source in sources:
        _maybe_auto_delete_exchange(tx, source)
    return count


def purge_queue(tx: Tx, connection_id: int, name: str) -> int:
    queue_for(tx, name, connection_id)
    count: int = tx.db.execute("DELETE FROM messages WHERE queue=? AND owner IS NULL", (name,)).rowcount
    return count


def _maybe_auto_delete_queue(tx: Tx, name: str) -> None:
    row = tx.db.execute("SELECT auto_delete, had_consumer FROM queues WHERE name=?", (name,)).fetchone()
    if row is not None and row[0] and row[1] and not consumer_count(tx, name):
        delete_queue(tx, name)


# --- bindings ------------------------------------------------------------------------------------------


def bind(
    tx: Tx,
    connection_id: int,
    kind: str,
    destination: str,
    source: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    if not source:
        raise AccessRefused("operation not permitted on the default exchange")
    topo = tx.current()
    exchange = topo.exchanges.get(source)
    if exchange is None:
        raise NotFound(f"no exchange '{source}' in vhost '/'")
    target = binding_destination(kind, destination)
    if kind == "queue":
        queue_for(tx, destination, connection_id)
    elif destination not in topo.exchanges:
        raise NotFound(f"no exchange '{destination}' in vhost '/'")
    # Validate as the routing table would (a bad x-match raises ValueError), before storing anything.
    BindingTable(exchange.type).add(target, routing_key, dict(arguments or {}))
    stored = binding_key(arguments)
    added = tx.db.execute(
        "INSERT OR IGNORE INTO bindings VALUES (?, ?, ?, ?, ?)",
        (source, kind, destination, routing_key, stored),
    ).rowcount
    if added:
        tx.bump("binding", source, (kind, destination, routing_key, stored))


def unbind(
    tx: Tx,
    connection_id: int,
    kind: str,
    destination: str,
    source: str,
    routing_key: str,
    arguments: Mapping[str, Any] | None,
) -> None:
    if not source:
        raise AccessRefused("operation not permitted on the default exchange")
    binding_destination(kind, destination)
    if kind == "queue":
        queue_for(tx, destination, connection_id)
    if source not in tx.current().exchanges:
        return
    stored = binding_key(arguments)
    removed = tx.db.execute(
        "DELETE FROM bindings WHERE source=? AND kind=? AND destination=? AND routing_key=? AND arguments=?",
        (source, kind, destination, routing_key, stored),
    ).rowcount
    if removed:
        tx.bump("binding", source, (kind, destination, routing_key, stored))
        _maybe_auto_delete_exchange(tx, source)


# --- consumers and deliveries --------------------------------------------------------------------------


def consume(tx: Tx, connection_id: int, channel_id: int, name: str, consumer_tag: str) -> None:
    queue = queue_for(tx, name, connection_id)
    tx.db.execute(
        "INSERT OR REPLACE INTO consumers VALUES (?, ?, ?, ?)",
        (connection_id, channel_id, consumer_tag, name),
    )
    tx.db.execute("UPDATE queues SET had_consumer=1, last_used=? WHERE name=?", (tx.now, name))
    tx.touched.add(queue.name)


def cancel_consumer(tx: Tx, connection_id: int, channel_id: int, consumer_tag: str) -> None:
    row = tx.db.execute(
        "DELETE FROM consumers WHERE connection=? AND channel=? AND tag=? RETURNING queue",
        (connection_id, channel_id, consumer_tag),
    ).fetchone()
    if row is None:
        return
    name = row[0]
    tx.db.execute("UPDATE queues SET last_used=? WHERE name=?", (tx.now, name))
    _maybe_auto_delete_queue(tx, name)
    queue = tx.current().queues.get(name)
    if queue is not None and queue.args.expires is not None:
        tx.next_due = min(tx.next_due, tx.now + queue.args.expires / 1000)


def close_channel(tx: Tx, connection_id: int, channel_id: int) -> None:
    """Remove the consumers of one channel of the connection (which may auto-delete their queues)."""
    for (consumer_tag,) in tx.db.execute(
        "SELECT tag FROM consumers WHERE connection=? AND channel=?", (connection_id, channel_id)
    ).fetchall():
        cancel_consumer(tx, connection_id, channel_id, consumer_tag)


def claim_rows(tx: Tx, connection_id: int, name: str, limit: int, no_ack: bool) -> list[Any]:
    if no_ack:
        return tx.db.execute(_CLAIM_NO_ACK, (name, limit)).fetchall()
    tx.count_ready()  # the batch is subtracted from the counts: every row of it must be in them
    rows = tx.db.execute(_CLAIM, (connection_id, tx.now, name, limit)).fetchall()
    if rows:
        # The ready count of the queue (see _schema._READY_COUNTS), for the whole batch at once.
        size = sum(len(row[2]) for row in rows)
        tx.db.execute(_UNCOUNT, (len(rows), size, name))
    return rows


def claim(tx: Tx, connection_id: int, plan: Sequence[Any], limit: int) -> list[tuple[Any, Any, list[Any]]]:
    """Claim rows for each consumer of the plan ``(channel, [(consumer, room)], channel_room)``."""
    out: list[tuple[Any, Any, list[Any]]] = []
    total = 0
    queues = tx.current().queues
    for channel, rooms, channel_room in plan:
        for consumer, room in rooms:
            n = min(room, channel_room, limit - total)
            if n <= 0:
                break
            queue = queues.get(consumer.queue)
            if queue is None:
                continue
            rows = claim_rows(tx, connection_id, consumer.queue, n, consumer.no_ack)
            if rows:
                out.append((channel, consumer, rows))
                total += len(rows)
                channel_room -= len(rows)
                _touch(tx, queue)
    return out


def get(tx: Tx, connection_id: int, name: str, no_ack: bool) -> tuple[Any, int] | None:
    queue = queue_for(tx, name, connection_id)
    _touch(tx, queue)
    rows = claim_rows(tx, connection_id, name, 1, no_ack)
    if not rows:
        return None
    return rows[0], ready_count(tx, name)


def reject(tx: Tx, connection_id: int, items: list[tuple[int, str]], requeue: bool) -> None:
    db = tx.db
    if requeue:
        db.executemany(
            "UPDATE messages SET owner=NULL, redelivered=1 WHERE id=? AND owner=?",
            [(message_id, connection_id) for message_id, _ in items],
        )
        tx.touched.update(name for _, name in items)
        return
    for message_id, name in items:
        row = db.execute(
            "DELETE FROM messages WHERE id=? AND owner=? "
            "RETURNING body, properties, headers, exchange, routing_key",
            (message_id, connection_id),
        ).fetchone()
        queue = tx.current().queues.get(name)
        if row is not None and queue is not None and queue.args.dead_letter_exchange is not None:
            dead_letter_row(tx, queue, row[0], row[1], row[2], row[3], row[4], "rejected")


def drop_connection(tx: Tx, connection_id: int) -> None:
    """A connection ends (closed, or its process died): release its messages, cancel its consumers,
    delete its exclusive queues."""
    db = tx.db
    released = db.execute(
        "UPDATE messages SET owner=NULL, redelivered=1 WHERE owner=? RETURNING queue", (connection_id,)
    ).fetchall()
    tx.touched.update(name for (name,) in released)
    for channel_id, consumer_tag in db.execute(
        "SELECT channel, tag FROM consumers WHERE connection=?", (connection_id,)
    ).fetchall():
        cancel_consumer(tx, connection_id, channel_id, consumer_tag)
    for (name,) in db.execute("SELECT name FROM queues WHERE exclusive_owner=?", (connection_id,)).fetchall():
        delete_queue(tx, name)
    db.execute("DELETE FROM connections WHERE id=?", (connection_id,))


def recover(tx: Tx) -> None:
    """Broker restart: nobody else has the file open. Non-durable and exclusive queues, non-durable
    exchanges and transient messages go; every claimed message is released, flagged redelivered."""
    db = tx.db
    db.execute("DELETE FROM consumers")
    db.execute("DELETE FROM connections")
    db.execute("DELETE FROM processes")
    for (name,) in db.execute(
        "SELECT name FROM queues WHERE durable=0 OR exclusive_owner IS NOT NULL"
    ).fetchall():
        delete_queue(tx, name)
    for (name,) in db.execute("SELECT name FROM exchanges WHERE durable=0").fetchall():
        _drop_exchange(tx, name)
    db.execute("DELETE FROM messages WHERE persistent=0")
    db.execute("DELETE FROM delayed WHERE persistent=0")
    db.execute(
        "UPDATE messages SET owner=NULL, redelivered=1, claimed_at=NULL "
        "WHERE owner IS NOT NULL AND owner != ?",
        (TOMBSTONE_OWNER,),
    )
    tx.bump()
