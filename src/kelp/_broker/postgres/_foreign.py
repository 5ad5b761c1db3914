"""Message rows written into a ``postgresql://`` broker's tables from outside kelp (raw SQL, another
program): what kelp does with one it cannot read is :mod:`kelp._broker.malformed`'s rule.

PostgreSQL enforces the column types and NOT NULLs, and its text is valid in the database's encoding, so a
foreign row can be wrong in fewer ways than on sqlite: its ``properties`` or ``headers`` are not kelp's
JSON or not a table (or a text property is not text, see ``check_properties``), or its ``priority`` is
outside what kelp stores for its queue (0 to the queue's ``x-max-priority``; 0 without one). Such a row
leaves its queue when a claim, a ``get``, an expiry, a rejection or a length limit meets it (or, for a
queue without priorities, the process's check each second for rows of another priority, which a
consumer's claims above the floor never meet); a held (delayed) one when it comes due. An
``expires_at`` or due time of infinity or NaN means "never"; a copy claimed by an ``owner`` that is no
kelp connection goes back to its queue (redelivered) with the process's check each second (``_listen``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from kelp._broker.core.store import Item
from kelp._broker.malformed import Malformed, check_properties, malformed_tables
from kelp._broker.queue_args import QueueDef
from kelp._broker.sqlite._codec import decode

__all__ = ["Bad", "priority_problem", "read", "store_name", "tables", "top_priority"]

#: A claimed row kelp cannot deliver, and what is wrong with it.
Bad = tuple[Sequence[Any], str]


def top_priority(queue: QueueDef | None) -> int | None:
    """The highest priority kelp stores in ``queue`` (None for a queue it does not know: not checked)."""
    return None if queue is None else queue.args.max_priority or 0


def priority_problem(priority: int, top: int | None) -> str | None:
    """What is wrong with a stored priority for a queue whose highest is ``top`` (None: nothing)."""
    if top is None or 0 <= priority <= top:
        return None
    return f"priority {priority} is outside 0..{top}, what kelp stores in this queue"


def read(rows: Sequence[Sequence[Any]], top: int | None) -> tuple[list[Item], list[Bad]]:
    """Claimed rows (``id, queue, priority, body, properties, headers, exchange, routing_key,
    redelivered, ...``) of one queue as items, and the malformed ones with their problems."""
    items: list[Item] = []
    bad: list[Bad] = []
    for row in rows:
        ref, _queue, priority, body, properties, headers, exchange, routing_key, redelivered = row[:9]
        try:
            problem = priority_problem(priority, top) if priority else None
            if problem is not None:
                raise Malformed(problem)
            props = decode(properties)
            check_properties(props)
            items.append((ref, body, props, decode(headers), exchange, routing_key, redelivered))
        except Malformed as exc:
            bad.append((row, str(exc)))
    return items, bad


def tables(row: Sequence[Any], top: int | None, problem: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(properties, headers)`` of the dead-lettered copy of a malformed row: no properties, and the
    record of its stored fields (see :func:`kelp._broker.malformed.malformed_tables`)."""
    raw: dict[str, Any] = {"properties": row[4], "headers": row[5]}
    if priority_problem(row[2], top) is not None:
        raw["priority"] = str(row[2])
    return malformed_tables(problem, raw)


def store_name(schema: sql.Identifier, table: str = "messages") -> str:
    """The store and table, for the ERROR line of a dropped malformed message."""
    return f"the postgresql {table} table of schema {schema.as_string(None)}"
