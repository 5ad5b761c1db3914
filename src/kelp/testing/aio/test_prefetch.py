"""Prefetch: a consumer never holds more unacked deliveries than its window."""

from __future__ import annotations

from typing import Any

from kelp.aio import Connection, Queue

from .helpers import Names, collect, consuming, count_becomes, declared, drain_for, drain_until


async def _publish(conn: Connection, queue: Any, count: Any) -> None:
    producer = conn.Producer()
    for n in range(count):
        await producer.publish(n, routing_key=queue.name)


async def test_prefetch_window_limits_unacked_deliveries(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        await _publish(conn, q, 10)
        async with consuming(conn, [q], prefetch_count=3) as inbox:
            assert await inbox.wait(conn, 3)
            await drain_for(conn)
            assert inbox.bodies == [0, 1, 2]
            await inbox.messages[0].ack()
            assert await inbox.wait(conn, 4)
            await drain_for(conn)
            assert inbox.bodies == [0, 1, 2, 3]
            await inbox.messages[1].ack()
            await inbox.messages[2].ack()
            assert await inbox.wait(conn, 6)
            await drain_for(conn)
            assert inbox.bodies == [0, 1, 2, 3, 4, 5]


async def test_prefetch_one_delivers_one_at_a_time(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        await _publish(conn, q, 5)
        async with consuming(conn, [q], prefetch_count=1) as inbox:
            for n in range(5):
                assert await inbox.wait(conn, n + 1)
                await drain_for(conn, 0.05)
                assert inbox.bodies == list(range(n + 1))
                await inbox.messages[n].ack()


async def test_reject_frees_a_prefetch_slot(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        await _publish(conn, q, 3)
        async with consuming(conn, [q], prefetch_count=1) as inbox:
            assert await inbox.wait(conn, 1)
            await inbox.messages[0].reject(requeue=False)
            assert await inbox.wait(conn, 2)
            await drain_for(conn)
            assert inbox.bodies == [0, 1]


async def test_qos_sets_the_window(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        consumer = conn.Consumer([q])
        await consumer.qos(prefetch_count=2)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        await _publish(conn, q, 5)
        async with consumer:
            assert await drain_until(conn, lambda: len(got) >= 2)
            await drain_for(conn)
            assert [m.payload for m in got] == [0, 1]
            await got[0].ack()
            assert await drain_until(conn, lambda: len(got) >= 3)
            await drain_for(conn)
            assert [m.payload for m in got] == [0, 1, 2]


async def test_without_prefetch_everything_is_delivered(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        await _publish(conn, q, 50)
        consumer = conn.Consumer([q])
        async with consumer:
            got = await collect(conn, consumer, 50)
            assert [m.payload for m in got] == list(range(50))


async def test_prefetch_is_per_consumer_across_connections(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        await _publish(conn, q, 6)
        async with (
            Connection(broker_url) as one,
            Connection(broker_url) as two,
            consuming(one, [q], prefetch_count=2) as first,
            consuming(two, [q], prefetch_count=1) as second,
        ):
            assert await first.wait(one, 2)
            assert await second.wait(two, 1)
            await drain_for(one, 0.1)
            await drain_for(two, 0.1)
            assert len(first) == 2
            assert len(second) == 1
            assert sorted(first.bodies + second.bodies) == sorted(set(first.bodies + second.bodies))
            assert await count_becomes(Queue(q.name)(conn.default_channel), 3)


async def test_a_global_window_is_shared_by_the_channel_consumers(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        one, two = Queue(names("q1")), Queue(names("q2"))
        await declared(conn, one)
        await declared(conn, two)
        await _publish(conn, one, 4)
        await _publish(conn, two, 4)
        consumer = conn.Consumer([one, two])  # two consumers on one channel
        await consumer.qos(prefetch_count=3, apply_global=True)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        async with consumer:
            assert await drain_until(conn, lambda: len(got) >= 3)
            await drain_for(conn)
            assert len(got) == 3
            await got[0].ack()
            assert await drain_until(conn, lambda: len(got) >= 4)
            await drain_for(conn)
            assert len(got) == 4


async def test_a_global_window_is_not_held_by_a_consumer_whose_queue_is_empty(
    broker_url: str, names: Names
) -> None:
    """Celery consumes several queues on one channel with a global window: an idle queue's consumer must
    not keep the busy queue's consumer from filling the window."""
    async with Connection(broker_url) as conn:
        idle, busy = Queue(names("idle")), Queue(names("busy"))
        await declared(conn, idle)
        await declared(conn, busy)
        await _publish(conn, busy, 4)
        consumer = conn.Consumer([idle, busy])  # the idle queue's consumer comes first
        await consumer.qos(prefetch_count=2, apply_global=True)
        got = []
        consumer.register_callback(lambda body, message: got.append(message))
        async with consumer:
            assert await drain_until(conn, lambda: len(got) >= 2)
            await drain_for(conn)
            assert [message.payload for message in got] == [0, 1]
            await got[0].ack()
            assert await drain_until(conn, lambda: len(got) >= 3)
            assert got[2].payload == 2
