"""Delayed messages on ``postgresql://``: the ``delayed`` table (schema version 2).

A delayed message is routed at publish and held as one row per queue, with its due time (the publisher's
wall clock, compared with the server's), until a process finds it due - the store's deadline includes the
earliest due time, so a waiting consumer wakes then - and moves it into ``messages`` in one transaction,
as a fresh publish (length limits apply then) whose TTL counts from the due time, in due then publish
order. A publish that holds a message due earlier than every held one announces ``w:<due>`` so that
waiting consumers of every process shorten their wait; later ones need no announcement.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

from psycopg import Cursor, sql

from kelp._broker.malformed import Malformed, check_properties, report_dropped
from kelp._broker.postgres._foreign import store_name
from kelp._broker.postgres._route import NOW, Copy, Topology, checked_size, store_copies
from kelp._broker.sqlite._codec import decode, encode

__all__ = ["PROMOTE_MAX", "cancel_delayed", "held_columns", "hold_statement", "promote"]

#: Delayed messages one transaction moves at most (the rest go in the next, at once).
PROMOTE_MAX = 1000

_HOLD = """INSERT INTO {s}.delayed
    (due, queue, message_id, body, properties, headers, exchange, routing_key, ttl_ms, persistent)
SELECT * FROM unnest(%s::float8[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::text[], %s::text[],
    %s::text[], %s::int8[], %s::bool[])"""
_VERSION = "(SELECT value FROM {s}.meta WHERE key = 'topology')"
# The snapshot of the statement does not see its own rows: min(due) is of the messages held before.
_EARLIER = """, notified AS (SELECT pg_notify({channel}, 'w:' || min(ins.due)) FROM ins
    HAVING min(ins.due) < coalesce((SELECT min(due) FROM {s}.delayed), 'Infinity'::float8))"""
_PROMOTE = (
    "DELETE FROM {s}.delayed WHERE id = ANY(ARRAY(SELECT id FROM {s}.delayed WHERE due <= {now} "
    "ORDER BY due, id LIMIT %s FOR UPDATE SKIP LOCKED)) RETURNING id, due, queue, body, properties, "
    "headers, exchange, routing_key, ttl_ms, ({now} - due) * 1000"
)

HeldCopy = tuple[float, Copy, str]  # (due, copy, message id)


def hold_statement(schema: sql.Identifier, channel: str, checked: bool) -> str:
    """Hold a batch of copies (arrays, see ``held_columns``) and announce an earlier due time, in one
    statement; with ``checked``, only if the topology counter equals the last parameter (safe without a
    transaction, as ``_route.insert_statement``). Returns one row: (the counter, announcements)."""
    insert = _HOLD + (f" WHERE {_VERSION} = %s::int8" if checked else "")
    text = f"WITH ins AS ({insert} RETURNING due){_EARLIER}"
    text += f" SELECT {_VERSION}, (SELECT count(*) FROM notified)"
    composed = sql.SQL(text.replace("{now}", NOW)).format(s=schema, channel=sql.Literal(channel))
    return composed.as_string(None)


def held_columns(held: Sequence[HeldCopy]) -> list[list[Any]]:
    properties = [encode(c.properties) for _, c, _ in held]
    headers = [encode(c.headers) if c.headers else "" for _, c, _ in held]
    for (_, copy, _), props, heads in zip(held, properties, headers, strict=True):
        checked_size(copy, props, heads)
    return [
        [due for due, _, _ in held],
        [c.queue.name for _, c, _ in held],
        [message_id for _, _, message_id in held],
        [c.body for _, c, _ in held],
        properties,
        headers,
        [c.exchange for _, c, _ in held],
        [c.routing_key for _, c, _ in held],
        [c.ttl for _, c, _ in held],
        [c.persistent for _, c, _ in held],
    ]


def promote(
    cur: Cursor[Any], schema: sql.Identifier, channel: str, topo: Topology, stored: Counter[str]
) -> int:
    """Move the held copies that are due into their queues (inside the caller's transaction, which has
    ``topo`` current; ``stored`` counts them, see ``store_copies``); return how many were taken
    (PROMOTE_MAX: more may be due)."""
    # One process at a time: two moving different due rows at once could commit the later-due ones
    # first (lower ids: delivered first). The second waits, then finds what the first left.
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_promote_key(schema),))
    cur.execute(sql.SQL(_PROMOTE.replace("{now}", NOW)).format(s=schema), (PROMOTE_MAX,), prepare=False)
    rows = cur.fetchall()
    rows.sort(key=lambda r: (r[1], r[0]))
    copies: list[Copy] = []
    for _id, _due, name, body, properties, headers, exchange, routing_key, ttl, elapsed in rows:
        queue = topo.queues.get(name)
        if queue is None:
            continue  # deleted meanwhile (its held rows go with it; this one was taken first)
        if ttl is not None:  # the TTL counts from the due time, not from now
            ttl = int(max(0.0, ttl - max(0.0, elapsed)))  # elapsed is infinite for a due of -Infinity
        try:
            props, heads = decode(properties), decode(headers)
            check_properties(props)
        except Malformed as exc:  # written from outside kelp
            where = store_name(schema, "delayed")
            report_dropped(where, name, _id, str(exc), "it was a delayed message")
            continue
        copies.append(Copy(queue, bytes(body), props, heads, exchange, routing_key, ttl))
    if copies:
        store_copies(cur, schema, channel, topo, copies, stored)
    return len(rows)


def _promote_key(schema: sql.Identifier) -> int:
    digest = hashlib.blake2b(f"kelp delayed {schema.as_string(None)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def cancel_delayed(cur: Cursor[Any], schema: sql.Identifier, message_id: str) -> int:
    """Drop the held copies of the delayed message ``message_id``; return how many."""
    cur.execute(sql.SQL("DELETE FROM {}.delayed WHERE message_id = %s").format(schema), (message_id,))
    return cur.rowcount
