"""Priority queues (``max_priority``): higher number first, FIFO among equals, priorities above the
maximum count as the maximum; a queue without ``max_priority`` ignores priorities."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Queue

from .helpers import Names, consuming, declared, take_all

pytestmark = pytest.mark.kelp_needs("priority")


async def _publish_all(conn: Connection, queue: Any, items: Any) -> None:
    producer = conn.Producer()
    for body, priority in items:
        if priority is None:
            await producer.publish(body, routing_key=queue.name)
        else:
            await producer.publish(body, routing_key=queue.name, priority=priority)


async def test_higher_priority_first_fifo_among_equals(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_priority=10))
        items = [("p1", 1), ("p5a", 5), ("none", None), ("p3", 3), ("p9", 9), ("p0", 0), ("p5b", 5)]
        await _publish_all(conn, bq, items)
        assert await take_all(bq) == ["p9", "p5a", "p5b", "p3", "p1", "none", "p0"]


async def test_priority_above_maximum_counts_as_maximum(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_priority=3))
        await _publish_all(conn, bq, [("low", 1), ("at-max", 3), ("over-max", 200), ("mid", 2)])
        assert await take_all(bq) == ["at-max", "over-max", "mid", "low"]


async def test_queue_without_max_priority_is_fifo(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_all(conn, bq, [("a", 1), ("b", 9), ("c", 5)])
        assert await take_all(bq) == ["a", "b", "c"]


async def test_consumer_receives_backlog_by_priority(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"), max_priority=5)
        await declared(conn, q)
        await _publish_all(conn, q, [(n, n % 3) for n in range(9)])
        async with consuming(conn, [q], prefetch_count=1) as inbox:
            for n in range(9):
                assert await inbox.wait(conn, n + 1)
                await inbox.messages[n].ack()
        assert inbox.bodies == [2, 5, 8, 1, 4, 7, 0, 3, 6]
        assert [m.properties["priority"] for m in inbox.messages] == [2, 2, 2, 1, 1, 1, 0, 0, 0]
