# Generated from tests/differential/aio/test_mixins_pools.py by scripts/unasync.py; do not edit.
"""Kombu's ``mixins`` (ConsumerMixin), ``pools`` and ``simple.SimpleBuffer``, compared with Kombu on RabbitMQ
(the sync twin under Kombu and kelp, this source under ``kelp``)."""

from __future__ import annotations

from typing import Any

from .helpers import attempt, count, declared, same


def consumer_mixin(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    producer.publish({"n": 0}, routing_key=queue.name)
    producer.publish(b"opaque", routing_key=queue.name, content_type="application/x-custom")
    for n in (1, 2, 3):
        producer.publish({"n": n}, routing_key=queue.name)
    events: list[Any] = []

    class Worker(lib.mixins.ConsumerMixin):
        def __init__(self, connection: Any) -> None:
            self.connection = connection

        def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
            events.append("get_consumers")
            return [Consumer(queues=[queue], callbacks=[self.on_message], accept=["json"], prefetch_count=1)]

        def on_connection_revived(self) -> None:
            events.append("revived")

        def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
            events.append(("ready", len(consumers), sorted(kwargs)))

        def on_consume_end(self, connection: Any, channel: Any) -> None:
            events.append("end")

        def on_decode_error(self, message: Any, exc: Exception) -> None:
            events.append(("decode error", type(exc).__name__, message.content_type))
            message.ack()

        def on_message(self, body: Any, message: Any) -> None:
            events.append(("message", body, message.delivery_info["redelivered"]))
            message.ack()
            # Stop at the last message: one that arrives while Kombu's cancel() waits for the broker still
            # reaches the callbacks there, and kelp requeues it (docs/migrating-from-kombu.md).
            if body == {"n": 3}:
                self.should_stop = True

    worker = Worker(conn)
    worker.run()
    return events, worker.should_stop, count(queue, 0), take_all(queue)


def take_all(queue: Any) -> list[Any]:
    got = []
    while (message := queue.get()) is not None:
        message.ack()
        got.append(message)
    return got


def test_consumer_mixin_runs_until_should_stop(reference_url, subject_url):
    same(reference_url, subject_url, consumer_mixin)


def connection_pool(lib, conn, names):
    pool = conn.Pool(limit=2)
    try:
        first = pool.acquire()
        second = pool.acquire()
        refused = attempt(pool.acquire)
        timed_out = attempt(lambda: pool.acquire(block=True, timeout=0.1))
        first.release()
        again = pool.acquire()
        reused = again is first
        again.release()
        second.release()
        limit = pool.limit
        pool.limit = 3
        return {
            "refused": refused,
            "timed_out": timed_out,
            "reused": reused,
            "limits": (limit, pool.limit),
        }
    finally:
        pool.force_close_all()


def test_connection_pool_limit_and_reuse(reference_url, subject_url):
    same(reference_url, subject_url, connection_pool)


def channel_pool(lib, conn, names):
    pool = conn.ChannelPool(limit=1)
    try:
        channel = pool.acquire()
        refused = attempt(pool.acquire)
        channel.release()
        again = pool.acquire()
        reused = again is channel
        queue = lib.Queue(names("q"))(again)
        queue.declare()
        lib.Producer(again).publish("through a pooled channel", routing_key=queue.name)
        got = take_all(queue)
        again.release()
        return refused, reused, got
    finally:
        pool.force_close_all()


def test_channel_pool(reference_url, subject_url):
    same(reference_url, subject_url, channel_pool)


def producer_pool(lib, conn, names):
    queue = declared(lib, conn, names)
    connections = conn.Pool(limit=1)
    producers = lib.pools.ProducerPool(connections, limit=1)
    try:
        producer = producers.acquire(block=True)
        with producer:
            producer.publish({"pooled": 1}, routing_key=queue.name)
            refused = attempt(lambda: producers.acquire(block=True, timeout=0.1))
        producer = producers.acquire(block=True, timeout=1)
        producer.publish({"pooled": 2}, routing_key=queue.name)
        producer.release()
        producers.limit = 2
        count(queue, 2)
        return refused, producers.limit, take_all(queue)
    finally:
        producers.force_close_all()
        connections.force_close_all()


def test_producer_pool(reference_url, subject_url):
    same(reference_url, subject_url, producer_pool)


def simple_buffer(lib, conn, names):
    buffer = conn.SimpleBuffer(names("buffer"))
    for n in range(3):
        buffer.put({"n": n})
    size = count(buffer.queue(buffer.channel), 3)
    first = buffer.get(timeout=2)
    # no_ack: settling is a no-op in Kombu, and the message is gone from the broker either way.
    settled = attempt(first.ack)
    rest = [buffer.get(timeout=2), buffer.get(timeout=2)]
    empty = attempt(lambda: buffer.get(timeout=0.2))
    after = count(buffer.queue(buffer.channel), 0)
    buffer.close()
    return {
        "size": size,
        "first": first,
        "settled": settled,
        "rest": [m.payload for m in rest],
        "empty": empty,
        "after": after,
        "empty_is_queue_empty": buffer.Empty.__name__,
    }


def test_simple_buffer(reference_url, subject_url):
    same(reference_url, subject_url, simple_buffer)


def consumer_producer_mixin(lib, conn, names):
    requests = declared(lib, conn, names)
    replies = declared(lib, conn, names)
    for n in range(2):
        lib.Producer(conn).publish({"n": n}, routing_key=requests.name)

    class Echo(lib.mixins.ConsumerProducerMixin):
        def __init__(self, connection: Any) -> None:
            self.connection = connection
            self.handled = 0

        def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
            return [Consumer(queues=[requests], on_message=self.on_request, accept=["json"])]

        def on_request(self, message: Any) -> None:
            self.producer.publish({"echo": message.payload}, routing_key=replies.name)
            message.ack()
            self.handled += 1
            self.should_stop = self.handled == 2

    Echo(conn).run()
    count(replies, 2)
    return [m.payload for m in take_all(replies)], count(requests, 0)


def test_consumer_producer_mixin(reference_url, subject_url):
    same(reference_url, subject_url, consumer_producer_mixin)


def pool_groups(lib, conn, names):
    queue = declared(lib, conn, names)
    producers = lib.pools.producers[conn]
    connections = lib.pools.connections[conn]
    try:
        producer = producers.acquire(block=True)
        with producer:
            producer.publish("from the producers group", routing_key=queue.name)
        pooled = connections.acquire(block=True)
        with pooled:
            lib.Producer(pooled).publish("from the connections group", routing_key=queue.name)
        count(queue, 2)
        return {
            "same pool per connection": lib.pools.producers[conn] is producers,
            "limit": producers.limit == lib.pools.get_limit(),
            "got": [m.payload for m in take_all(queue)],
        }
    finally:
        producers.force_close_all()
        connections.force_close_all()


def test_pool_groups(reference_url, subject_url):
    same(reference_url, subject_url, pool_groups)


def simple_queue_options(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    named = lib.Queue(names("q"), exchange, routing_key="rk", durable=False)
    simple = lib.simple.SimpleQueue(
        conn.default_channel, named, serializer="json", compression="zlib", accept=["json", "yaml"]
    )
    simple.put({"n": 1})
    simple.put({"n": 2}, serializer="yaml", headers={"h": 1})
    simple.put({"n": 3}, compression=None, priority=4)
    sized = count(simple.queue(simple.channel), 3)
    got = []
    for _ in range(3):
        message = simple.get(block=True, timeout=2)
        got.append((message, message.headers.get("compression")))
        message.ack()
    nothing = attempt(lambda: simple.get(block=False))
    simple.close()
    with_options = conn.SimpleQueue(
        names("opts"),
        queue_opts={"durable": False},
        queue_args={"x-max-length": 1},
        exchange_opts={"durable": False},
    )
    with_options.put("first")
    with_options.put("second")
    kept = count(with_options.queue(with_options.channel), 1)
    last = with_options.get(timeout=2)
    last.ack()
    with_options.close()
    return sized, got, nothing, kept, last.payload


def test_simple_queue_options(reference_url, subject_url):
    same(reference_url, subject_url, simple_queue_options)
