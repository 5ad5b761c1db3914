"""Time on a ``postgresql://`` store: expiring what falls due (TTLs, x-expires, delayed messages) and
telling a waiting connection how long it may wait. ``next_due`` (see ``_listen``) is the process's
earliest known deadline; each publish that sets a TTL or holds a delayed message brings it forward
(``due``), and every claim, ``get`` and wait expires what is due first (``tick``), at least once a
second (REAP_INTERVAL)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from typing import Any

from psycopg import Cursor

from kelp._broker.postgres import _delayed
from kelp._broker.postgres._counters import PUBLISHED
from kelp._broker.postgres._listen import READY, REAP_INTERVAL
from kelp._broker.postgres._owners import Owners
from kelp._broker.postgres._route import ROW, dead_letter_rows

__all__ = ["Deadlines"]


class Deadlines(Owners):
    """Expiry and waiting (the store's acks, claims and publishes are in ``_store``)."""

    def expire(self) -> None:
        """Move the delayed copies that are due into their queues; dead-letter the ready copies past their
        TTL; delete the queues unused past x-expires."""
        stored: Counter[str] = Counter()
        with self.locked() as (cur, topo):
            if _delayed.promote(cur, self.schema, self.channel, topo, stored) == _delayed.PROMOTE_MAX:
                self.next_due = 0.0  # more are due: the next tick moves them
            found = self.rows(
                cur,
                "DELETE FROM {s}.messages WHERE id IN (SELECT id FROM {s}.messages WHERE expires_at <= {now} "
                f"AND owner IS NULL FOR UPDATE SKIP LOCKED) RETURNING {ROW}",
            )
            found.sort(key=lambda r: (r[1], -r[2], r[0]))
            dead_letter_rows(cur, self.schema, self.channel, topo, found, "expired", stored)
        self.count_all(PUBLISHED, stored)
        with self.cursor() as cur:
            unused = self.rows(
                cur,
                "SELECT name FROM {s}.queues q WHERE last_used + expires_ms / 1000.0 <= {now} "
                "AND NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name)",
            )
        self.delete_queues([row[0] for row in unused])

    def tick(self) -> None:
        """Expire what is due (see ``next_due``)."""
        now = time.time()
        if now >= self.next_due:
            wait = self._deadline(())[1]
            self.next_due = now + min(REAP_INTERVAL, wait if wait is not None else REAP_INTERVAL)

    def due(self, seconds: float | None) -> None:
        if seconds is not None:
            self.next_due = min(self.next_due, time.time() + seconds)

    def prepare_wait(self, queues: Collection[str], consuming: bool) -> float | None:
        ready, wait = self._deadline(queues)
        return 0.0 if ready else wait

    def _has_ready(self, cur: Cursor[Any], queue: str) -> bool:
        known = self.floor(queue)
        if known is None:
            text = f"SELECT EXISTS (SELECT 1 FROM {{s}}.messages WHERE queue = %s AND {READY})"
            return bool(self.one(cur, text, queue, plan=True))
        text = "SELECT EXISTS (SELECT 1 FROM {s}.messages WHERE queue = %s AND priority = 0 AND id >= %s AND "
        return bool(self.one(cur, text + READY + ")", queue, known[0], plan=True))

    def _deadline(self, queues: Collection[str]) -> tuple[bool, float | None]:
        """Expire what is due; whether ``queues`` have ready copies, and the seconds to the next deadline."""
        with self.cursor() as cur:
            self.flush_acks(cur)
            now, *deadlines = self.rows(
                cur,
                # An infinite or NaN time (a foreign row's) is no deadline: never due.
                "SELECT {now}, (SELECT min(expires_at) FROM {s}.messages "
                "WHERE expires_at < 'Infinity' AND owner IS NULL), "
                "(SELECT min(last_used + expires_ms / 1000.0) FROM {s}.queues q "
                "WHERE NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name)), "
                "(SELECT min(due) FROM {s}.delayed WHERE due < 'Infinity')",
            )[0]
            ready = any(self._has_ready(cur, queue) for queue in queues)
        due = min((d for d in deadlines if d is not None), default=None)
        if due is not None and due <= now:
            self.expire()
            return True, 0.0
        return ready, None if due is None else max(0.0, due - now)
