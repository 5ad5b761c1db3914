"""Kombu's ``mixins`` (ConsumerMixin), ``pools`` and ``simple.SimpleBuffer``, compared with Kombu on RabbitMQ
(the sync twin under Kombu and kelp, this source under ``kelp.aio``)."""

from __future__ import annotations

from typing import Any

from .helpers import attempt, count, declared, same


async def consumer_mixin(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    await producer.publish({"n": 0}, routing_key=queue.name)
    await producer.publish(b"opaque", routing_key=queue.name, content_type="application/x-custom")
    for n in (1, 2, 3):
        await producer.publish({"n": n}, routing_key=queue.name)
    events: list[Any] = []

    class Worker(lib.mixins.ConsumerMixin):
        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
            events.append("get_consumers")
            return [Consumer(queues=[queue], callbacks=[self.on_message], accept=["json"], prefetch_count=1)]

        async def on_connection_revived(self) -> None:
            events.append("revived")

        async def on_consume_ready(
            self, connection: Any, channel: Any, consumers: Any, **kwargs: Any
        ) -> None:
            events.append(("ready", len(consumers), sorted(kwargs)))

        async def on_consume_end(self, connection: Any, channel: Any) -> None:
            events.append("end")

        async def on_decode_error(self, message: Any, exc: Exception) -> None:
            events.append(("decode error", type(exc).__name__, message.content_type))
            await message.ack()

        async def on_message(self, body: Any, message: Any) -> None:
            events.append(("message", body, message.delivery_info["redelivered"]))
            await message.ack()
            # Stop at the last message: one that arrives while Kombu's cancel() waits for the broker still
            # reaches the callbacks there, and kelp requeues it (docs/migrating-from-kombu.md).
            if body == {"n": 3}:
                self.should_stop = True

    worker = Worker(conn)
    await worker.run()
    return events, worker.should_stop, await count(queue, 0), await take_all(queue)


async def take_all(queue: Any) -> list[Any]:
    got = []
    while (message := await queue.get()) is not None:
        await message.ack()
        got.append(message)
    return got


async def test_consumer_mixin_runs_until_should_stop(reference_url, subject_url):
    await same(reference_url, subject_url, consumer_mixin)


async def connection_pool(lib, conn, names):
    pool = conn.Pool(limit=2)
    try:
        first = await pool.acquire()
        second = await pool.acquire()
        refused = await attempt(pool.acquire)
        timed_out = await attempt(lambda: pool.acquire(block=True, timeout=0.1))
        await first.release()
        again = await pool.acquire()
        reused = again is first
        await again.release()
        await second.release()
        limit = pool.limit
        pool.limit = 3
        return {
            "refused": refused,
            "timed_out": timed_out,
            "reused": reused,
            "limits": (limit, pool.limit),
        }
    finally:
        await pool.force_close_all()


async def test_connection_pool_limit_and_reuse(reference_url, subject_url):
    await same(reference_url, subject_url, connection_pool)


async def channel_pool(lib, conn, names):
    pool = conn.ChannelPool(limit=1)
    try:
        channel = await pool.acquire()
        refused = await attempt(pool.acquire)
        await channel.release()
        again = await pool.acquire()
        reused = again is channel
        queue = lib.Queue(names("q"))(again)
        await queue.declare()
        await lib.Producer(again).publish("through a pooled channel", routing_key=queue.name)
        got = await take_all(queue)
        await again.release()
        return refused, reused, got
    finally:
        await pool.force_close_all()


async def test_channel_pool(reference_url, subject_url):
    await same(reference_url, subject_url, channel_pool)


async def producer_pool(lib, conn, names):
    queue = await declared(lib, conn, names)
    connections = conn.Pool(limit=1)
    producers = lib.pools.ProducerPool(connections, limit=1)
    try:
        producer = await producers.acquire(block=True)
        async with producer:
            await producer.publish({"pooled": 1}, routing_key=queue.name)
            refused = await attempt(lambda: producers.acquire(block=True, timeout=0.1))
        producer = await producers.acquire(block=True, timeout=1)
        await producer.publish({"pooled": 2}, routing_key=queue.name)
        await producer.release()
        producers.limit = 2
        await count(queue, 2)
        return refused, producers.limit, await take_all(queue)
    finally:
        await producers.force_close_all()
        await connections.force_close_all()


async def test_producer_pool(reference_url, subject_url):
    await same(reference_url, subject_url, producer_pool)


async def simple_buffer(lib, conn, names):
    buffer = conn.SimpleBuffer(names("buffer"))
    for n in range(3):
        await buffer.put({"n": n})
    size = await count(buffer.queue(buffer.channel), 3)
    first = await buffer.get(timeout=2)
    # no_ack: settling is a no-op in Kombu, and the message is gone from the broker either way.
    settled = await attempt(first.ack)
    rest = [await buffer.get(timeout=2), await buffer.get(timeout=2)]
    empty = await attempt(lambda: buffer.get(timeout=0.2))
    after = await count(buffer.queue(buffer.channel), 0)
    await buffer.close()
    return {
        "size": size,
        "first": first,
        "settled": settled,
        "rest": [m.payload for m in rest],
        "empty": empty,
        "after": after,
        "empty_is_queue_empty": buffer.Empty.__name__,
    }


async def test_simple_buffer(reference_url, subject_url):
    await same(reference_url, subject_url, simple_buffer)


async def consumer_producer_mixin(lib, conn, names):
    requests = await declared(lib, conn, names)
    replies = await declared(lib, conn, names)
    for n in range(2):
        await lib.Producer(conn).publish({"n": n}, routing_key=requests.name)

    class Echo(lib.mixins.ConsumerProducerMixin):
        def __init__(self, connection: Any) -> None:
            self.connection = connection
            self.handled = 0

        def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
            return [Consumer(queues=[requests], on_message=self.on_request, accept=["json"])]

        async def on_request(self, message: Any) -> None:
            await self.producer.publish({"echo": message.payload}, routing_key=replies.name)
            await message.ack()
            self.handled += 1
            self.should_stop = self.handled == 2

    await Echo(conn).run()
    await count(replies, 2)
    return [m.payload for m in await take_all(replies)], await count(requests, 0)


async def test_consumer_producer_mixin(reference_url, subject_url):
    await same(reference_url, subject_url, consumer_producer_mixin)


async def pool_groups(lib, conn, names):
    queue = await declared(lib, conn, names)
    producers = lib.pools.producers[conn]
    connections = lib.pools.connections[conn]
    try:
        producer = await producers.acquire(block=True)
        async with producer:
            await producer.publish("from the producers group", routing_key=queue.name)
        pooled = await connections.acquire(block=True)
        async with pooled:
            await lib.Producer(pooled).publish("from the connections group", routing_key=queue.name)
        await count(queue, 2)
        return {
            "same pool per connection": lib.pools.producers[conn] is producers,
            "limit": producers.limit == lib.pools.get_limit(),
            "got": [m.payload for m in await take_all(queue)],
        }
    finally:
        await producers.force_close_all()
        await connections.force_close_all()


async def test_pool_groups(reference_url, subject_url):
    await same(reference_url, subject_url, pool_groups)


async def simple_queue_options(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    named = lib.Queue(names("q"), exchange, routing_key="rk", durable=False)
    simple = lib.simple.SimpleQueue(
        conn.default_channel, named, serializer="json", compression="zlib", accept=["json", "yaml"]
    )
    await simple.put({"n": 1})
    await simple.put({"n": 2}, serializer="yaml", headers={"h": 1})
    await simple.put({"n": 3}, compression=None, priority=4)
    sized = await count(simple.queue(simple.channel), 3)
    got = []
    for _ in range(3):
        message = await simple.get(block=True, timeout=2)
        got.append((message, message.headers.get("compression")))
        await message.ack()
    nothing = await attempt(lambda: simple.get(block=False))
    await simple.close()
    with_options = conn.SimpleQueue(
        names("opts"),
        queue_opts={"durable": False},
        queue_args={"x-max-length": 1},
        exchange_opts={"durable": False},
    )
    await with_options.put("first")
    await with_options.put("second")
    kept = await count(with_options.queue(with_options.channel), 1)
    last = await with_options.get(timeout=2)
    await last.ack()
    await with_options.close()
    return sized, got, nothing, kept, last.payload


async def test_simple_queue_options(reference_url, subject_url):
    await same(reference_url, subject_url, simple_queue_options)
