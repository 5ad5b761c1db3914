"""Message TTL: per-message ``expiration`` and per-queue ``message_ttl`` (both in seconds); an expired
message is never delivered. The lower of the two applies."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Queue

from .helpers import Names, consuming, count_becomes, declared, drain_for, payloads, sleep, take_all

pytestmark = pytest.mark.kelp_needs("ttl")


async def test_per_message_expiration_drops_only_that_message(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("keep-1", routing_key=bq.name)
        await producer.publish("short", routing_key=bq.name, expiration=0.1)
        await producer.publish("keep-2", routing_key=bq.name, expiration=30)
        await sleep(0.35)
        assert await take_all(bq) == ["keep-1", "keep-2"]


async def test_message_taken_before_expiry_is_delivered(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("in time", routing_key=bq.name, expiration=10)
        assert await payloads(bq, 1) == ["in time"]


async def test_queue_message_ttl_expires_every_message(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), message_ttl=0.1))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=bq.name)
        await sleep(0.35)
        assert await bq.get() is None
        assert await count_becomes(bq, 0, timeout=3.0)


async def test_queue_ttl_does_not_expire_fresh_messages(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), message_ttl=0.3))
        producer = conn.Producer()
        await producer.publish("old", routing_key=bq.name)
        await sleep(0.45)
        await producer.publish("new", routing_key=bq.name)
        assert await take_all(bq) == ["new"]


async def test_lower_of_queue_and_message_ttl_applies(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        long_queue = await declared(conn, Queue(names("q"), message_ttl=30))
        short_queue = await declared(conn, Queue(names("q"), message_ttl=0.1))
        producer = conn.Producer()
        await producer.publish("short message", routing_key=long_queue.name, expiration=0.1)
        await producer.publish("long message", routing_key=short_queue.name, expiration=30)
        await sleep(0.35)
        assert await take_all(long_queue) == []
        assert await take_all(short_queue) == []


async def test_expired_message_is_not_delivered_to_a_late_consumer(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        producer = conn.Producer()
        await producer.publish("stale", routing_key=q.name, expiration=0.1)
        await sleep(0.35)
        async with consuming(conn, [q]) as inbox:
            await drain_for(conn)
            assert inbox.bodies == []
            await producer.publish("fresh", routing_key=q.name, expiration=10)
            assert await inbox.wait(conn, 1)
            assert inbox.bodies == ["fresh"]
