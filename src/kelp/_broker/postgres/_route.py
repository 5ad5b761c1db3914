"""Routing and storing copies on ``postgresql://``: the topology a process routes with, and the SQL that
stores one row per routed copy (with the length limits, TTLs and dead-lettering of RabbitMQ).

Each process keeps a snapshot of the topology (exchanges with their bindings, queues with their
arguments) tagged with the ``topology`` counter of ``meta``. Every topology change bumps the counter
holding ``messages`` locked against writers (SHARE ROW EXCLUSIVE, a moment); every publish stores its
copies only if the counter, read after its own lock on ``messages`` (ROW EXCLUSIVE), still equals its
snapshot's - else it reloads and routes again. So no copy reaches a queue deleted, or misses a binding
added, before the publish.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from psycopg import Cursor, sql

from kelp._broker.malformed import Malformed, check_properties, report_dropped
from kelp._broker.postgres import _foreign
from kelp._broker.queue_args import (
    ExchangeDef,
    QueueDef,
    binding_destination,
    dead_letter,
    expiration_ms,
)
from kelp._broker.sqlite._codec import decode, encode
from kelp._envelope import Envelope, is_persistent
from kelp.exceptions import InconsistencyError, NotFound, PreconditionFailed, UsageError
from kelp.routing import BindingTable, route

__all__ = [
    "MAX_MESSAGE_BYTES",
    "STATEMENT_BYTES",
    "Copy",
    "Topology",
    "checked_size",
    "dead_letter_rows",
    "in_statements",
    "load_topology",
    "store_copies",
]

T = TypeVar("T")
NOW = "extract(epoch FROM clock_timestamp())::float8"
#: A row's columns as read for delivery or dead-lettering.
ROW = "id, queue, priority, body, properties, headers, exchange, routing_key, redelivered"
#: The largest message stored (body, properties, headers and routing key, in bytes). PostgreSQL neither
#: takes nor sends a protocol message over 1 GiB, and a row is read back as text, where each byte of the
#: body takes two characters; RabbitMQ's own ceiling is 512 MiB.
MAX_MESSAGE_BYTES = 256 * 2**20
#: Copies are stored in statements of at most about this many bytes of bodies each (a fanout of a large
#: message, a large batch), in one transaction.
STATEMENT_BYTES = 64 * 2**20


class Topology:
    """One consistent snapshot of exchanges, bindings and queues, at counter ``version``."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.exchanges: dict[str, ExchangeDef] = {}
        self.queues: dict[str, QueueDef] = {}

    def lookup(self, name: str) -> BindingTable | None:
        exchange = self.exchanges.get(name)
        return exchange.table if exchange is not None else None

    def route(self, exchange_name: str, routing_key: str, headers: dict[str, Any] | None) -> list[QueueDef]:
        """The queues a message reaches; NotFound for an exchange this snapshot does not have."""
        if not exchange_name:
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFound(f"no exchange '{exchange_name}' in vhost '/'")
        names = route(self.lookup, exchange_name, routing_key, headers)
        if not names:
            alternate = exchange.arguments.get("alternate-exchange")
            if isinstance(alternate, str) and alternate in self.exchanges:
                names = route(self.lookup, alternate, routing_key, headers)
        return [self.queues[name] for name in names if name in self.queues]


def load_topology(cur: Cursor[Any], schema: sql.Identifier) -> Topology:
    """Read the whole topology (the caller runs this in one snapshot: a REPEATABLE READ transaction)."""
    cur.execute(sql.SQL("SELECT value FROM {}.meta WHERE key = 'topology'").format(schema))
    row = cur.fetchone()
    topo = Topology(row[0] if row else 0)
    # A row kelp did not write (arguments that are not kelp's JSON, an unknown binding kind...) stops every
    # operation with one clear error: routing around it could send messages where they do not belong.
    where = "exchanges"
    try:
        cur.execute(
            sql.SQL("SELECT name, type, durable, auto_delete, internal, arguments FROM {}.exchanges").format(
                schema
            )
        )
        for name, type_, durable, auto_delete, internal, arguments in cur.fetchall():
            where = f"exchanges row {name!r}"
            topo.exchanges[name] = ExchangeDef(name, type_, durable, auto_delete, internal, decode(arguments))
        cur.execute(
            sql.SQL("SELECT name, durable, exclusive_owner, auto_delete, arguments FROM {}.queues").format(
                schema
            )
        )
        for name, durable, owner, auto_delete, arguments in cur.fetchall():
            where = f"queues row {name!r}"
            topo.queues[name] = QueueDef(name, durable, owner, auto_delete, decode(arguments))
        wanted = "source, kind, destination, routing_key, arguments"
        cur.execute(sql.SQL(f"SELECT {wanted} FROM {{}}.bindings").format(schema))
        for source, kind, destination, routing_key, arguments in cur.fetchall():
            where = f"bindings row {source!r} -> {destination!r}"
            exchange = topo.exchanges.get(source)
            if exchange is not None:
                exchange.table.add(binding_destination(kind, destination), routing_key, decode(arguments))
    except (ValueError, TypeError, UsageError) as exc:  # Malformed is a ValueError
        raise InconsistencyError(
            f"the kelp schema {schema.as_string(None)} holds a declaration kelp did not write "
            f"({where}): {exc}"
        ) from None
    return topo


class Copy:
    """One copy of a message on its way into one queue."""

    __slots__ = (
        "body",
        "exchange",
        "headers",
        "persistent",
        "priority",
        "properties",
        "queue",
        "routing_key",
        "ttl",
    )

    def __init__(
        self,
        queue: QueueDef,
        body: bytes,
        properties: dict[str, Any],
        headers: dict[str, Any],
        exchange: str,
        routing_key: str,
        ttl: int | None,
    ) -> None:
        self.queue = queue
        self.body = body
        self.properties = properties
        self.headers = headers
        self.exchange = exchange
        self.routing_key = routing_key
        args = queue.args
        if args.message_ttl is not None:
            ttl = args.message_ttl if ttl is None else min(ttl, args.message_ttl)
        self.ttl = ttl
        priority = properties.get("priority") or 0
        self.priority = min(priority, args.max_priority or 0) if isinstance(priority, int) else 0
        self.persistent = is_persistent(properties)


def copies_of(topo: Topology, envelope: Envelope) -> list[Copy]:
    queues = topo.route(envelope.exchange, envelope.routing_key, envelope.headers)
    if not queues:
        return []
    ttl = expiration_ms(envelope.properties)
    return [
        Copy(
            q,
            envelope.body,
            envelope.properties,
            envelope.headers,
            envelope.exchange,
            envelope.routing_key,
            ttl,
        )
        for q in queues
    ]


_INSERT = """INSERT INTO {s}.messages
    (queue, priority, body, properties, headers, exchange, routing_key, expires_at, persistent, size)
SELECT q, p, b, pr, h, e, rk, {now} + ttl / 1000.0, per, octet_length(b)
FROM unnest(%s::text[], %s::int[], %s::bytea[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int8[],
    %s::bool[]) AS u(q, p, b, pr, h, e, rk, ttl, per)"""
# Wake-ups go to the queues some process consumes from.
_NOTIFY = """, notified AS (SELECT pg_notify({channel}, 'r:' || d.low || ':' || d.queue)
    FROM (SELECT queue, min(id) AS low FROM ins GROUP BY queue) d
    WHERE EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = d.queue))"""
_VERSION = "(SELECT value FROM {s}.meta WHERE key = 'topology')"
_NOTIFY_ONE = """CASE WHEN EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = messages.queue)
    THEN pg_notify({channel}, 'r:' || id || ':' || queue)::text END"""


_ONE = """INSERT INTO {s}.messages
    (queue, priority, body, properties, headers, exchange, routing_key, expires_at, persistent, size)
SELECT %s::text, %s::int, %s::bytea, %s::text, %s::text, %s::text, %s::text, {now} + %s::int8 / 1000.0,
    %s::bool, %s::int"""


def insert_statement(schema: sql.Identifier, channel: str, checked: bool, one: bool = False) -> str:
    """Store a batch of copies (arrays, see ``columns``; ``one``: a single copy, see ``values``) and wake
    their consumers, in one statement; with ``checked``, only if the topology counter equals the last
    parameter. Returns one row, (the counter, wake-ups), or (``one``) no row when the counter differs.

    Checked, it is safe without a transaction of its own: the INSERT takes its lock on ``messages``
    before it takes its snapshot, and a topology change holds a lock on ``messages`` that excludes it
    until the change commits; so the counter it reads is the one of the topology it stores under."""
    # Every parameter has its type in the text: the pipeline prepares it without parameter types.
    insert = (_ONE if one else _INSERT) + (f" WHERE {_VERSION} = %s::int8" if checked else "")
    if one:  # no CTE: a third cheaper for the server, which does one per publish
        text = f"{insert} RETURNING {_VERSION}, {_NOTIFY_ONE}"
    else:
        text = f"WITH ins AS ({insert} RETURNING queue, id){_NOTIFY}"
        text += f" SELECT {_VERSION}, (SELECT count(*) FROM notified)"
    composed = sql.SQL(text.replace("{now}", NOW)).format(s=schema, channel=sql.Literal(channel))
    return composed.as_string(None)


def version_statement(schema: sql.Identifier) -> str:
    """For a publish routed to no queue: the topology counter, and the last parameter (the counter it was
    routed with). A counter that moved means a queue or binding may have come since: routed again."""
    return sql.SQL(f"SELECT {_VERSION}, %s::int8").format(s=schema).as_string(None)


def _text_size(text: str) -> int:
    return len(text) if len(text) < 2**20 else len(text.encode("utf-8", "surrogatepass"))


def checked_size(copy: Copy, properties: str, headers: str) -> None:
    """Raise PreconditionFailed (before anything is stored) for a message over MAX_MESSAGE_BYTES."""
    rough = len(copy.body) + len(properties) + len(headers) + len(copy.routing_key)
    if rough * 4 <= MAX_MESSAGE_BYTES:  # at most 4 bytes a character: surely small enough
        return
    size = len(copy.body) + _text_size(properties) + _text_size(headers) + _text_size(copy.routing_key)
    if size > MAX_MESSAGE_BYTES:
        raise PreconditionFailed(
            f"message of {size} bytes (body, properties, headers, routing key) is larger than "
            f"postgresql:// stores ({MAX_MESSAGE_BYTES} bytes): not published"
        )


def in_statements(items: Sequence[T], body: Callable[[T], bytes]) -> list[Sequence[T]]:
    """``items`` cut in runs of at most STATEMENT_BYTES of bodies (at least one item each)."""
    runs: list[Sequence[T]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        size = len(body(item))
        if i > start and total + size > STATEMENT_BYTES:
            runs.append(items[start:i])
            start, total = i, 0
        total += size
    runs.append(items[start:])
    return runs


def values(copy: Copy) -> list[Any]:
    properties = encode(copy.properties)
    headers = encode(copy.headers) if copy.headers else ""
    checked_size(copy, properties, headers)
    return [
        copy.queue.name,
        copy.priority,
        copy.body,
        properties,
        headers,
        copy.exchange,
        copy.routing_key,
        copy.ttl,
        copy.persistent,
        len(copy.body),
    ]


def columns(copies: Sequence[Copy]) -> list[list[Any]]:
    properties = [encode(c.properties) for c in copies]
    headers = [encode(c.headers) if c.headers else "" for c in copies]
    for copy, props, heads in zip(copies, properties, headers, strict=True):
        checked_size(copy, props, heads)
    return [
        [c.queue.name for c in copies],
        [c.priority for c in copies],
        [c.body for c in copies],
        properties,
        headers,
        [c.exchange for c in copies],
        [c.routing_key for c in copies],
        [c.ttl for c in copies],
        [c.persistent for c in copies],
    ]


def store_copies(
    cur: Cursor[Any],
    schema: sql.Identifier,
    channel: str,
    topo: Topology,
    copies: Iterable[Copy],
    stored: Counter[str],
) -> list[Copy]:
    """Store the copies inside the caller's transaction (which holds the topology lock, shared, and has
    ``topo`` current), applying each queue's length limit; return the copies a full queue refused.
    ``stored`` counts the copies stored per queue (dead-lettered ones too), for the caller to count once
    committed."""
    refused: list[Copy] = []
    plain: list[Copy] = []
    for copy in copies:
        if copy.queue.args.bounded:
            if not _store_bounded(cur, schema, channel, topo, copy, stored):
                refused.append(copy)
        else:
            plain.append(copy)
    for run in in_statements(plain, lambda c: c.body) if plain else ():
        cur.execute(insert_statement(schema, channel, False), columns(run))
        stored.update(c.queue.name for c in run)
    return refused


def _store_bounded(
    cur: Cursor[Any], schema: sql.Identifier, channel: str, topo: Topology, copy: Copy, stored: Counter[str]
) -> bool:
    """A copy into a queue with x-max-length(-bytes): refused, or stored dropping from the head."""
    queue = copy.queue
    args = queue.args
    # Publishers to one bounded queue take turns: its row lock orders their counts.
    cur.execute(sql.SQL("SELECT 1 FROM {}.queues WHERE name = %s FOR UPDATE").format(schema), (queue.name,))
    cur.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(size), 0) FROM {}.messages WHERE queue = %s AND owner IS NULL"
        ).format(schema),
        (queue.name,),
    )
    count, size = cur.fetchone() or (0, 0)
    size_of = len(copy.body)
    full = (args.max_length is not None and count + 1 > args.max_length) or (
        args.max_length_bytes is not None and size + size_of > args.max_length_bytes
    )
    if full and args.overflow != "drop-head":
        if args.overflow == "reject-publish-dlx":
            row = (
                0,
                queue.name,
                copy.priority,
                copy.body,
                copy.properties,
                copy.headers,
                copy.exchange,
                copy.routing_key,
            )
            dead_letter_rows(cur, schema, channel, topo, [row], "maxlen", stored)
        return False
    cur.execute(insert_statement(schema, channel, False), columns([copy]))
    stored[queue.name] += 1
    count, size = count + 1, size + size_of
    if not full:
        return True
    cur.execute(
        sql.SQL(
            "SELECT id, size FROM {}.messages WHERE queue = %s AND owner IS NULL ORDER BY priority DESC, id"
        ).format(schema),
        (queue.name,),
    )
    drop: list[int] = []
    for row_id, row_size in cur.fetchall():
        over = (args.max_length is not None and count > args.max_length) or (
            args.max_length_bytes is not None and size > args.max_length_bytes
        )
        if not over:
            break
        drop.append(row_id)
        count, size = count - 1, size - row_size
    if drop:
        cur.execute(
            sql.SQL(f"DELETE FROM {{}}.messages WHERE id = ANY(%s) RETURNING {ROW}").format(schema), (drop,)
        )
        rows = sorted(cur.fetchall(), key=lambda r: (-r[2], r[0]))
        dead_letter_rows(cur, schema, channel, topo, rows, "maxlen", stored)
    return True


def dead_letter_rows(
    cur: Cursor[Any],
    schema: sql.Identifier,
    channel: str,
    topo: Topology,
    rows: Iterable[Sequence[Any]],
    reason: str,
    stored: Counter[str],
    problems: Mapping[Any, str] | None = None,
) -> None:
    """Dead-letter removed rows ``(id, queue, priority, body, properties, headers, exchange, routing_key,
    ...)`` through their queue's dead-letter exchange, if it has one (inside the caller's transaction).
    A malformed row (one kelp cannot read, or whose id ``problems`` names) is dead-lettered or dropped
    as :mod:`kelp._broker.malformed` says."""
    copies: list[Copy] = []
    now = time.time()
    for row in rows:
        row_id, queue_name, _priority, body, properties, headers, exchange, routing_key = row[:8]
        queue = topo.queues.get(queue_name)
        problem = problems.get(row_id) if problems else None
        if problem is None:
            try:
                props = properties if isinstance(properties, dict) else decode(properties)
                heads = headers if isinstance(headers, dict) else decode(headers)
                check_properties(props)
            except Malformed as exc:
                problem = str(exc)
        if problem is not None:
            props, heads = _foreign.tables(row, _foreign.top_priority(queue), problem)
        dlx = queue.args.dead_letter_exchange if queue is not None else None
        if queue is None or dlx is None or (dlx and dlx not in topo.exchanges):
            # No dead-letter exchange (or a missing one): the message is dropped, as in RabbitMQ.
            if problem is not None:
                why = "the queue has no dead-letter exchange" if dlx is None else f"no exchange {dlx!r}"
                report_dropped(_foreign.store_name(schema), queue_name, row_id, problem, why)
            continue
        result = dead_letter(
            heads, props, queue=queue_name, reason=reason, exchange=exchange, routing_key=routing_key, now=now
        )
        if result is None:
            continue  # a dead-letter cycle: dropped
        new_headers, new_properties = result
        key = queue.args.dead_letter_routing_key or routing_key
        for target in topo.route(dlx, key, new_headers):
            copies.append(Copy(target, bytes(body), new_properties, new_headers, dlx, key, None))
    if copies:
        store_copies(cur, schema, channel, topo, copies, stored)
