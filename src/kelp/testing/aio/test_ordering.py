"""Per-queue FIFO for a single consumer."""

from __future__ import annotations

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, fetch

COUNT = 1000


async def test_one_consumer_receives_in_publish_order(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        producer = conn.Producer()
        for n in range(COUNT):
            await producer.publish(n, routing_key=q.name)
        async with consuming(conn, [q], prefetch_count=100) as inbox:
            acked = 0
            while acked < COUNT:
                assert await inbox.wait(conn, acked + 1), f"stalled after {acked} messages"
                for message in inbox.messages[acked:]:
                    await message.ack()
                acked = len(inbox.messages)
        assert inbox.bodies == list(range(COUNT))


async def test_get_returns_in_publish_order(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(200):
            await producer.publish({"seq": n}, routing_key=bq.name)
        messages = await fetch(bq, 200)
        assert [m.payload["seq"] for m in messages] == list(range(200))
        assert await bq.get() is None


async def test_order_kept_per_queue_when_consuming_several(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        qa = Queue(names("a"), ex, routing_key="a")
        qb = Queue(names("b"), ex, routing_key="b")
        async with consuming(conn, [qa, qb]) as inbox:
            producer = conn.Producer()
            for n in range(50):
                await producer.publish({"q": "a", "n": n}, exchange=ex, routing_key="a")
                await producer.publish({"q": "b", "n": n}, exchange=ex, routing_key="b")
            assert await inbox.wait(conn, 100)
            for message in inbox.messages:
                await message.ack()
        for name in ("a", "b"):
            assert [body["n"] for body in inbox.bodies if body["q"] == name] == list(range(50))
