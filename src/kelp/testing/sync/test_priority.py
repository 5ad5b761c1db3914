# Generated from src/kelp/testing/aio/test_priority.py by scripts/unasync.py; do not edit.
"""Priority queues (``max_priority``): higher number first, FIFO among equals, priorities above the
maximum count as the maximum; a queue without ``max_priority`` ignores priorities."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Queue

from .helpers import Names, consuming, declared, take_all

pytestmark = pytest.mark.kelp_needs("priority")


def _publish_all(conn: Connection, queue: Any, items: Any) -> None:
    producer = conn.Producer()
    for body, priority in items:
        if priority is None:
            producer.publish(body, routing_key=queue.name)
        else:
            producer.publish(body, routing_key=queue.name, priority=priority)


def test_higher_priority_first_fifo_among_equals(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_priority=10))
        items = [("p1", 1), ("p5a", 5), ("none", None), ("p3", 3), ("p9", 9), ("p0", 0), ("p5b", 5)]
        _publish_all(conn, bq, items)
        assert take_all(bq) == ["p9", "p5a", "p5b", "p3", "p1", "none", "p0"]


def test_priority_above_maximum_counts_as_maximum(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_priority=3))
        _publish_all(conn, bq, [("low", 1), ("at-max", 3), ("over-max", 200), ("mid", 2)])
        assert take_all(bq) == ["at-max", "over-max", "mid", "low"]


def test_queue_without_max_priority_is_fifo(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        _publish_all(conn, bq, [("a", 1), ("b", 9), ("c", 5)])
        assert take_all(bq) == ["a", "b", "c"]


def test_consumer_receives_backlog_by_priority(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"), max_priority=5)
        declared(conn, q)
        _publish_all(conn, q, [(n, n % 3) for n in range(9)])
        with consuming(conn, [q], prefetch_count=1) as inbox:
            for n in range(9):
                assert inbox.wait(conn, n + 1)
                inbox.messages[n].ack()
        assert inbox.bodies == [2, 5, 8, 1, 4, 7, 0, 3, 6]
        assert [m.properties["priority"] for m in inbox.messages] == [2, 2, 2, 1, 1, 1, 0, 0, 0]
