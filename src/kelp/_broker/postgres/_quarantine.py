"""Taking malformed copies (see ``_foreign``) out of their queues on ``postgresql://``, inside the
caller's transaction ordered against topology changes (``Database.locked``): each is dead-lettered
(reason ``rejected``) or dropped with an ERROR log, as :mod:`kelp._broker.malformed` says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from psycopg import Cursor, sql

from kelp._broker.postgres._foreign import Bad, priority_problem
from kelp._broker.postgres._route import ROW, Topology, dead_letter_rows

__all__ = ["take_claimed", "take_foreign_priorities"]


def take_claimed(
    cur: Cursor[Any],
    schema: sql.Identifier,
    channel: str,
    topo: Topology,
    owner: int,
    bad: Sequence[tuple[bool, Bad]],
    stored: Counter[str],
) -> None:
    """The owner's malformed claimed copies, ``(no_ack, (row, problem))`` each: a no_ack one was deleted
    by its claim; any other leaves if the owner still holds it (else its session ended and it is back in
    its queue, for whoever claims it next)."""
    held = [row[0] for no_ack, (row, _) in bad if not no_ack]
    taken: set[Any] = set()
    if held:
        cur.execute(
            sql.SQL("DELETE FROM {}.messages WHERE id = ANY(%s) AND owner = %s RETURNING id").format(schema),
            (held, owner),
        )
        taken = {r[0] for r in cur.fetchall()}
    rows = [row for no_ack, (row, _) in bad if no_ack or row[0] in taken]
    problems = {row[0]: problem for _, (row, problem) in bad}
    dead_letter_rows(cur, schema, channel, topo, rows, "rejected", stored, problems)


def take_foreign_priorities(
    cur: Cursor[Any], schema: sql.Identifier, channel: str, topo: Topology, queue: str, stored: Counter[str]
) -> None:
    """The ready copies of ``queue``, a queue without priorities, whose priority is not 0 (a consumer's
    claims above the queue's floor take priority 0 only: they would stay for ever)."""
    queue_def = topo.queues.get(queue)
    if queue_def is None or queue_def.args.max_priority:
        return  # deleted, or declared again with priorities: those copies are its messages
    cur.execute(
        sql.SQL(
            "DELETE FROM {s}.messages WHERE id IN (SELECT id FROM {s}.messages WHERE queue = %s "
            f"AND owner IS NULL AND (priority > 0 OR priority < 0) FOR UPDATE SKIP LOCKED) RETURNING {ROW}"
        ).format(s=schema),
        (queue,),
    )
    rows = sorted(cur.fetchall(), key=lambda r: r[0])
    problems = {r[0]: priority_problem(r[2], 0) or "" for r in rows}
    dead_letter_rows(cur, schema, channel, topo, rows, "rejected", stored, problems)
