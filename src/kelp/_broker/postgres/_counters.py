"""Traffic counters of a ``postgresql://`` store: per queue, copies published into it, deliveries, acks.

A counter row updated by every publish would be a hot row: each update leaves a dead version that VACUUM
cannot remove while any transaction in the database is open (issue 12), and publishers would queue on its
lock. Instead each process counts in memory and adds its counts to ``<schema>.counters`` in one statement
at most every FLUSH_DELAY seconds (and before it reads the counters, and when its last connection
closes): at most two small UPDATEs per second per process, whatever the traffic.

What the numbers mean: the counts of every process, each up to FLUSH_DELAY seconds behind (a process's
own counts are exact in its own ``queue_stats``); counts a process had not added when it was killed are
lost; counts for a queue deleted meanwhile are dropped (a queue declared again starts from 0, except for
the counts of its predecessor that other processes add within FLUSH_DELAY of its deletion). A copy is
counted when the transaction that stored it commits: published (routed to the queue, dead-lettered to
it, or a delayed message come due), delivered (claimed by a consumer or taken by ``get``, a redelivery
again), acked (when the ack is handed to the store; the row is deleted with the next batch).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from kelp._broker.postgres._listen import Listening
from kelp._envelope import QueueStats
from kelp.exceptions import KelpError

__all__ = ["ACKED", "DELIVERED", "FLUSH_DELAY", "PUBLISHED", "Counting"]

#: Seconds a process keeps its counts before adding them to the table.
FLUSH_DELAY = 0.5
PUBLISHED, DELIVERED, ACKED = 0, 1, 2

_ADD = """INSERT INTO {s}.counters AS c (queue, published, delivered, acked)
SELECT u.q, u.p, u.d, u.a FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[]) AS u(q, p, d, a)
WHERE EXISTS (SELECT 1 FROM {s}.queues WHERE name = u.q)
ON CONFLICT (queue) DO UPDATE SET published = c.published + excluded.published,
    delivered = c.delivered + excluded.delivered, acked = c.acked + excluded.acked"""


class Counting(Listening):
    def __init__(self, conninfo: str, schema: str, flush_publishes: bool) -> None:
        super().__init__(conninfo, schema, flush_publishes)
        self._counts: dict[str, list[int]] = {}
        self._count_lock = threading.Lock()
        self._count_timer: threading.Timer | None = None

    def count(self, kind: int, queue: str, n: int = 1) -> None:
        """Count ``n`` of ``kind`` (PUBLISHED, DELIVERED, ACKED) for ``queue``."""
        with self._count_lock:
            counts = self._counts.get(queue)
            if counts is None:
                counts = self._counts[queue] = [0, 0, 0]
            counts[kind] += n
            if self._count_timer is None:
                self._start_timer()

    def count_all(self, kind: int, queues: Mapping[str, int] | Iterable[str]) -> None:
        """Count ``kind`` for each queue named (a mapping: that many for each)."""
        items = queues.items() if isinstance(queues, Mapping) else ((q, 1) for q in queues)
        for queue, n in items:
            self.count(kind, queue, n)

    def _start_timer(self) -> None:
        timer = self._count_timer = threading.Timer(FLUSH_DELAY, self.flush_counts)
        timer.daemon = True
        timer.start()

    def flush_counts(self) -> None:
        """Add this process's counts to the table (kept for the next time if the server is away)."""
        with self._count_lock:
            counts, self._counts = self._counts, {}
            timer, self._count_timer = self._count_timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        if not counts:
            return
        names = sorted(counts)  # every process locks the rows in one order
        try:
            with self.cursor() as cur:
                self.rows(cur, _ADD, names, *([counts[n][kind] for n in names] for kind in range(3)))
        except KelpError:
            with self._count_lock:
                for name, found in counts.items():
                    mine = self._counts.setdefault(name, [0, 0, 0])
                    for kind in range(3):
                        mine[kind] += found[kind]

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        """Every queue's ready and unacked copies (of every process), consumers, delayed copies and
        traffic counters (see above: other processes' up to FLUSH_DELAY behind)."""
        self.flush_acks()
        self.flush_counts()
        with self.cursor() as cur:
            found = self.rows(
                cur,
                "SELECT q.name, count(m.id) FILTER (WHERE m.owner IS NULL), count(m.id) FILTER "
                "(WHERE m.owner IS NOT NULL), (SELECT count(*) FROM {s}.consumers c WHERE c.queue = q.name), "
                "(SELECT count(*) FROM {s}.delayed d WHERE d.queue = q.name), "
                "coalesce(t.published, 0), coalesce(t.delivered, 0), coalesce(t.acked, 0) "
                "FROM {s}.queues q LEFT JOIN {s}.messages m ON m.queue = q.name "
                "LEFT JOIN {s}.counters t ON t.queue = q.name "
                "GROUP BY q.name, t.queue ORDER BY q.name",
            )
        return [
            QueueStats(name, int(r), int(u), int(c), int(d), int(p), int(dl), int(a))
            for name, r, u, c, d, p, dl, a in found
        ]
