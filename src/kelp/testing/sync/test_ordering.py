# Generated from src/kelp/testing/aio/test_ordering.py by scripts/unasync.py; do not edit.
"""Per-queue FIFO for a single consumer."""

from __future__ import annotations

from kelp import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, fetch

COUNT = 1000


def test_one_consumer_receives_in_publish_order(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        producer = conn.Producer()
        for n in range(COUNT):
            producer.publish(n, routing_key=q.name)
        with consuming(conn, [q], prefetch_count=100) as inbox:
            acked = 0
            while acked < COUNT:
                assert inbox.wait(conn, acked + 1), f"stalled after {acked} messages"
                for message in inbox.messages[acked:]:
                    message.ack()
                acked = len(inbox.messages)
        assert inbox.bodies == list(range(COUNT))


def test_get_returns_in_publish_order(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(200):
            producer.publish({"seq": n}, routing_key=bq.name)
        messages = fetch(bq, 200)
        assert [m.payload["seq"] for m in messages] == list(range(200))
        assert bq.get() is None


def test_order_kept_per_queue_when_consuming_several(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        qa = Queue(names("a"), ex, routing_key="a")
        qb = Queue(names("b"), ex, routing_key="b")
        with consuming(conn, [qa, qb]) as inbox:
            producer = conn.Producer()
            for n in range(50):
                producer.publish({"q": "a", "n": n}, exchange=ex, routing_key="a")
                producer.publish({"q": "b", "n": n}, exchange=ex, routing_key="b")
            assert inbox.wait(conn, 100)
            for message in inbox.messages:
                message.ack()
        for name in ("a", "b"):
            assert [body["n"] for body in inbox.bodies if body["q"] == name] == list(range(50))
