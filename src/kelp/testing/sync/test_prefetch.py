# Generated from src/kelp/testing/aio/test_prefetch.py by scripts/unasync.py; do not edit.
"""Prefetch: a consumer never holds more unacked deliveries than its window."""

from __future__ import annotations

from typing import Any

from kelp import Connection, Queue

from .helpers import Names, collect, consuming, count_becomes, declared, drain_for, drain_until


def _publish(conn: Connection, queue: Any, count: Any) -> None:
    producer = conn.Producer()
    for n in range(count):
        producer.publish(n, routing_key=queue.name)


def test_prefetch_window_limits_unacked_deliveries(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        _publish(conn, q, 10)
        with consuming(conn, [q], prefetch_count=3) as inbox:
            assert inbox.wait(conn, 3)
            drain_for(conn)
            assert inbox.bodies == [0, 1, 2]
            inbox.messages[0].ack()
            assert inbox.wait(conn, 4)
            drain_for(conn)
            assert inbox.bodies == [0, 1, 2, 3]
            inbox.messages[1].ack()
            inbox.messages[2].ack()
            assert inbox.wait(conn, 6)
            drain_for(conn)
            assert inbox.bodies == [0, 1, 2, 3, 4, 5]


def test_prefetch_one_delivers_one_at_a_time(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        _publish(conn, q, 5)
        with consuming(conn, [q], prefetch_count=1) as inbox:
            for n in range(5):
                assert inbox.wait(conn, n + 1)
                drain_for(conn, 0.05)
                assert inbox.bodies == list(range(n + 1))
                inbox.messages[n].ack()


def test_reject_frees_a_prefetch_slot(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        _publish(conn, q, 3)
        with consuming(conn, [q], prefetch_count=1) as inbox:
            assert inbox.wait(conn, 1)
            inbox.messages[0].reject(requeue=False)
            assert inbox.wait(conn, 2)
            drain_for(conn)
            assert inbox.bodies == [0, 1]


def test_qos_sets_the_window(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        consumer = conn.Consumer([q])
        consumer.qos(prefetch_count=2)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        _publish(conn, q, 5)
        with consumer:
            assert drain_until(conn, lambda: len(got) >= 2)
            drain_for(conn)
            assert [m.payload for m in got] == [0, 1]
            got[0].ack()
            assert drain_until(conn, lambda: len(got) >= 3)
            drain_for(conn)
            assert [m.payload for m in got] == [0, 1, 2]


def test_without_prefetch_everything_is_delivered(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        _publish(conn, q, 50)
        consumer = conn.Consumer([q])
        with consumer:
            got = collect(conn, consumer, 50)
            assert [m.payload for m in got] == list(range(50))


def test_prefetch_is_per_consumer_across_connections(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        _publish(conn, q, 6)
        with (
            Connection(broker_url) as one,
            Connection(broker_url) as two,
            consuming(one, [q], prefetch_count=2) as first,
            consuming(two, [q], prefetch_count=1) as second,
        ):
            assert first.wait(one, 2)
            assert second.wait(two, 1)
            drain_for(one, 0.1)
            drain_for(two, 0.1)
            assert len(first) == 2
            assert len(second) == 1
            assert sorted(first.bodies + second.bodies) == sorted(set(first.bodies + second.bodies))
            assert count_becomes(Queue(q.name)(conn.default_channel), 3)


def test_a_global_window_is_shared_by_the_channel_consumers(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        one, two = Queue(names("q1")), Queue(names("q2"))
        declared(conn, one)
        declared(conn, two)
        _publish(conn, one, 4)
        _publish(conn, two, 4)
        consumer = conn.Consumer([one, two])  # two consumers on one channel
        consumer.qos(prefetch_count=3, apply_global=True)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        with consumer:
            assert drain_until(conn, lambda: len(got) >= 3)
            drain_for(conn)
            assert len(got) == 3
            got[0].ack()
            assert drain_until(conn, lambda: len(got) >= 4)
            drain_for(conn)
            assert len(got) == 4


def test_a_global_window_is_not_held_by_a_consumer_whose_queue_is_empty(
    broker_url: str, names: Names
) -> None:
    """Celery consumes several queues on one channel with a global window: an idle queue's consumer must
    not keep the busy queue's consumer from filling the window."""
    with Connection(broker_url) as conn:
        idle, busy = Queue(names("idle")), Queue(names("busy"))
        declared(conn, idle)
        declared(conn, busy)
        _publish(conn, busy, 4)
        consumer = conn.Consumer([idle, busy])  # the idle queue's consumer comes first
        consumer.qos(prefetch_count=2, apply_global=True)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        with consumer:
            assert drain_until(conn, lambda: len(got) >= 2)
            drain_for(conn)
            assert [message.payload for message in got] == [0, 1]
            got[0].ack()
            assert drain_until(conn, lambda: len(got) >= 3)
            assert got[2].payload == 2
