"""Broadcast: one fanout exchange, every subscriber queue gets every message, in order."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, drain_for, payloads

pytestmark = pytest.mark.kelp_needs("fanout")


async def test_broadcast_to_three_subscribers(broker_url: str, names: Names) -> None:
    news = Exchange(names("news"), "fanout")
    subscribers = [Queue(names("sub"), news) for _ in range(3)]
    async with (
        Connection(broker_url) as publisher,
        Connection(broker_url) as c1,
        Connection(broker_url) as c2,
        Connection(broker_url) as c3,
        consuming(c1, [subscribers[0]]) as i1,
        consuming(c2, [subscribers[1]]) as i2,
        consuming(c3, [subscribers[2]]) as i3,
    ):
        producer = publisher.Producer()
        for n in range(5):
            await producer.publish({"edition": n}, exchange=news)
        for conn, inbox in zip((c1, c2, c3), (i1, i2, i3)):
            assert await inbox.wait(conn, 5)
            await drain_for(conn, 0.05)
            assert inbox.bodies == [{"edition": n} for n in range(5)]
            for message in inbox.messages:
                await message.ack()


async def test_broadcast_to_no_subscribers_is_dropped(broker_url: str, names: Names) -> None:
    news = Exchange(names("news"), "fanout")
    async with Connection(broker_url) as conn:
        producer = conn.Producer()
        await producer.publish("into the void", exchange=news, declare=[news])
        late = await declared(conn, Queue(names("late"), news))
        await producer.publish("heard", exchange=news)
        assert await payloads(late, 1) == ["heard"]
        assert await late.get() is None


async def test_broadcast_with_server_named_exclusive_queues(broker_url: str, names: Names) -> None:
    news = Exchange(names("news"), "fanout")
    async with Connection(broker_url) as conn:
        listeners = [await declared(conn, Queue("", news, exclusive=True)) for _ in range(3)]
        assert len({listener.name for listener in listeners}) == 3
        await conn.Producer().publish("all hands", exchange=news)
        for listener in listeners:
            assert await payloads(listener, 1) == ["all hands"]


async def test_producer_declare_creates_the_route(broker_url: str, names: Names) -> None:
    news = Exchange(names("news"), "fanout")
    q = Queue(names("sub"), news)
    async with Connection(broker_url) as conn:
        await conn.Producer().publish("declared on publish", exchange=news, declare=[q])
        assert await payloads(q(conn.default_channel), 1) == ["declared on publish"]
