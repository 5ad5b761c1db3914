"""Delayed messages in the sqlite store: the ``delayed`` table (schema 5, see _schema._DELAYED).

A delayed message is routed at publish and held as one row per queue until its due time (wall clock);
the first write transaction that finds it due (``Tx.begin`` checks, then ``_declare.tick``) moves it into
``messages`` as a fresh publish whose TTL counts from the due time, in due then publish (id) order. The
store's next deadline includes the earliest due time, so waiting consumers (of every process) wake then.
"""

from __future__ import annotations

from typing import Any

from kelp._broker.malformed import Malformed, report_dropped
from kelp._broker.sqlite import _dead_letter, _ops
from kelp._delay import generated_due
from kelp._envelope import Envelope

__all__ = ["HOLD_IF_CURRENT", "HeldRow", "cancel_delayed", "hold", "promote"]

_HOLD = (
    "INSERT INTO delayed (due, queue, message_id, body, properties, headers, exchange, routing_key, ttl_ms, "
    "persistent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
_DUE = (
    "SELECT id, due, queue, body, properties, headers, exchange, routing_key, ttl_ms, persistent "
    "FROM delayed WHERE due <= ? ORDER BY due, id LIMIT ?"
)
#: Delayed messages one transaction moves at most (the rest go in the next, scheduled at once).
PROMOTE_MAX = 1000


def hold(
    tx: _ops.Tx, name: str, envelope: Envelope, props: str, headers: str, persistent: bool, ttl: int | None
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
            _ops.blob(envelope.body),
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


def promote(tx: _ops.Tx) -> None:
    """Move the delayed messages that are due into their queues, in due then publish order, each as a fresh
    publish whose TTL counts from its due time (length limits apply now, as to any publish)."""
    rows = tx.db.execute(_DUE, (tx.now, PROMOTE_MAX)).fetchall()
    if not rows:
        return
    tx.db.executemany("DELETE FROM delayed WHERE id=?", [(row[0],) for row in rows])
    for row_id, due, name, body, props, headers, exchange, routing_key, ttl, persistent in rows:
        try:
            body, properties, header_table = _dead_letter.read_row(
                body, props, headers, exchange, routing_key
            )
        except Malformed as exc:  # written from outside kelp
            report_dropped("the sqlite delayed table", name, row_id, str(exc), "it was a delayed message")
            continue
        envelope = Envelope(body, properties, header_table, exchange, routing_key)
        _ops.enqueue(tx, name, envelope, props, headers or "", bool(persistent), ttl, due)
    if len(rows) == PROMOTE_MAX:
        tx.next_due = tx.now  # more are due: the next transaction moves them


def cancel_delayed(tx: _ops.Tx, message_id: str) -> int:
    """Drop the held copies of a delayed message; return how many. An id kelp generated carries the due
    time (kelp._delay.delayed_message_id): found through the due-time index; a user's through its own."""
    due = generated_due(message_id)
    if due is not None:
        sql = "DELETE FROM delayed WHERE due >= ? AND due < ? AND message_id = ?"
        count: int = tx.db.execute(sql, (due - 0.001, due + 0.002, message_id)).rowcount
        return count
    sql = "DELETE FROM delayed WHERE message_id = ? AND message_id NOT GLOB 'kd-*'"
    count = tx.db.execute(sql, (message_id,)).rowcount
    return count
