"""Consuming on the sqlite store, each operation inside one write transaction (:class:`._ops.Tx`): claiming
ready messages for consumers, ``get``, and rejecting (requeued, dropped or dead-lettered). Acks and
releases are group-committed by :mod:`._ops` (``ack_rows``, ``release_rows``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kelp._broker.sqlite import _dead_letter, _declare
from kelp._broker.sqlite._ops import Tx, touch

__all__ = ["claim", "claim_rows", "get", "reject"]

_RETURNING = "RETURNING id, priority, body, properties, headers, exchange, routing_key, redelivered"
# Ready rows through the ready index (whose condition the WHERE clause repeats so SQLite uses it): after
# the fold, so fresh rows are in it too.
_HEAD = (
    "SELECT id FROM messages WHERE queue=? AND owner IS NULL AND fresh IS NULL ORDER BY priority DESC, id "
    "LIMIT ?"
)
# Constant statements, built once: the sqlite3 statement cache is keyed by the SQL text.
_CLAIM_NO_ACK = f"DELETE FROM messages WHERE id IN ({_HEAD}) {_RETURNING}"
_UNCOUNT = (
    "UPDATE queue_ready SET count = count - ?1, bytes = bytes - ?2, delivered = delivered + ?1 "
    "WHERE queue = ?3"
)
# A no_ack claim deletes its rows (their trigger uncounts them): only the deliveries are added.
_DELIVERED = "UPDATE queue_ready SET delivered = delivered + ? WHERE queue = ?"
_CLAIM = (
    "UPDATE messages SET owner=?, claimed_at=?, delivery_count=delivery_count+1 "
    f"WHERE id IN ({_HEAD}) {_RETURNING}"
)


def claim_rows(tx: Tx, connection_id: int, name: str, limit: int, no_ack: bool) -> list[Any]:
    # Every row taken must be counted first: a claimed batch is subtracted from the ready count, and
    # a row this transaction inserted must count as published before a no_ack claim deletes it.
    tx.count_ready()
    if no_ack:
        taken = tx.db.execute(_CLAIM_NO_ACK, (name, limit)).fetchall()
        if taken:
            tx.db.execute(_DELIVERED, (len(taken), name))
        return taken
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
                touch(tx, queue)
    return out


def get(tx: Tx, connection_id: int, name: str, no_ack: bool) -> tuple[Any, int] | None:
    queue = _declare.queue_for(tx, name, connection_id)
    touch(tx, queue)
    rows = claim_rows(tx, connection_id, name, 1, no_ack)
    if not rows:
        return None
    return rows[0], _declare.ready_count(tx, name)


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
            _dead_letter.dead_letter_row(tx, queue, row[0], row[1], row[2], row[3], row[4], "rejected")
