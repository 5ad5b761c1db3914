"""Messages written from outside kelp (see :mod:`kelp._broker.malformed`): rows that cannot be read
leave their queues, dead-lettered or dropped and reported, and text that is not UTF-8 is repaired.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from kelp._broker.malformed import as_text, malformed_tables, report_dropped
from kelp._broker.sqlite import _dead_letter, _ops


def quarantine(tx: _ops.Tx, connection_id: int, items: Sequence[tuple[bool, str, Any, str]]) -> None:
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
    tx: _ops.Tx,
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
    _dead_letter.dead_letter_message(
        tx,
        queue,
        _dead_letter.blob_of(body),
        properties,
        header_table,
        as_text(exchange),
        as_text(routing_key),
        "rejected",
    )


def is_undecodable_text(exc: sqlite3.Error) -> bool:
    """True for the error sqlite3 raises reading a TEXT value that is not UTF-8."""
    return "Could not decode to UTF-8" in str(exc)


def repair_text(tx: _ops.Tx) -> None:
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
