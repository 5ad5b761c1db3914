"""Scenarios over Kombu's public API: the sync twin runs under Kombu on RabbitMQ and under kelp on each
transport, this source under ``kelp.aio``; the three observations must be equal (see ``helpers.same``).

Each scenario returns what a program would observe; the harness turns it into plain data.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..harness import Failed
from .helpers import attempt, count, declared, drain_until, on_new_channel, raw, same, sleep, take, wait_take

# --- Producer / Message: bodies, serializers, compression, properties ------------------------------

BODIES = [
    ({"a": [1, 2.5, None, True], "s": "é"}, None),
    (["x", 1], "json"),
    ("plain text", None),
    (b"\x00raw bytes\xff", None),
    (42, None),
    (None, "json"),
    ("text as json", "json"),
]


async def round_trip(lib, conn, names, body, serializer):
    queue = await declared(lib, conn, names)
    await lib.Producer(conn).publish(body, routing_key=queue.name, serializer=serializer)
    [message] = await take(queue, 1)
    # The exact bytes only for bodies sent as they are: kelp's JSON is compact and unescaped UTF-8,
    # Kombu's spaced and ASCII-escaped (docs/migrating-from-kombu.md); both decode alike.
    return message, raw(message.body) if serializer is None and isinstance(body, str | bytes) else None


@pytest.mark.parametrize(("body", "serializer"), BODIES)
async def test_publish_and_get_round_trip(reference_url, subject_url, body, serializer):
    await same(reference_url, subject_url, round_trip, body, serializer)


async def compressed(lib, conn, names, compression):
    queue = await declared(lib, conn, names)
    published = await attempt(
        lambda: lib.Producer(conn).publish(
            {"big": "x" * 500}, routing_key=queue.name, compression=compression
        )
    )
    # What publish returns is transport-specific in Kombu (a promise on py-amqp): compare only failures.
    published = published if isinstance(published, Failed) else "published"
    message = await queue.get()
    return published, message, None if message is None else message.headers.get("compression")


# An unknown compression name is left out: Kombu raises a bare KeyError, kelp EncodeError (documented).
@pytest.mark.parametrize("compression", ["zlib", "bzip2", "gzip", "lzma"])
async def test_compression(reference_url, subject_url, compression):
    await same(reference_url, subject_url, compressed, compression)


PROPERTY_SETS = [
    {"priority": 3, "correlation_id": "c-1", "reply_to": "replies", "message_id": "m-1"},
    {"expiration": 60, "type": "kind", "app_id": "app"},
    {"delivery_mode": 1, "timestamp": 1767225600},
    {"delivery_mode": "transient"},
    {"delivery_mode": "persistent"},
    {
        "headers": {
            "int": 1,
            "neg": -5,
            "float": 2.5,
            "bool": False,
            "none": None,
            "list": [1, "a"],
            "d": {"k": "v"},
        }
    },
    {"headers": {"big": 2**40, "text": "ü"}},
    {"content_type": "application/x-custom", "content_encoding": "binary"},
]


async def with_properties(lib, conn, names, properties):
    queue = await declared(lib, conn, names)
    body = b"opaque" if "content_type" in properties else {"p": 1}
    await lib.Producer(conn).publish(body, routing_key=queue.name, **properties)
    [message] = await take(queue, 1, accept=["json", properties.get("content_type", "json")])
    return message


@pytest.mark.parametrize("properties", PROPERTY_SETS)
async def test_message_properties(reference_url, subject_url, properties):
    await same(reference_url, subject_url, with_properties, properties)


async def producer_defaults(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    queue = lib.Queue(names("q"), exchange, routing_key="rk")(conn.default_channel)
    await queue.declare()
    producer = lib.Producer(conn, exchange=exchange, routing_key="rk", serializer="json")
    await producer.publish({"n": 1})
    await producer.publish({"n": 2}, routing_key="other")
    await producer.publish({"n": 3}, routing_key="rk", headers={"h": "v"})
    return await take(queue, 3)


async def test_producer_defaults_and_exchange_routing(reference_url, subject_url):
    await same(reference_url, subject_url, producer_defaults)


# --- Routing ------------------------------------------------------------------------------------------


async def routing(lib, conn, names):
    topic = lib.Exchange(names("topic"), "topic", durable=False)
    fanout = lib.Exchange(names("fan"), "fanout", durable=False)
    headers = lib.Exchange(names("hdr"), "headers", durable=False)
    queues = {
        "star": lib.Queue(names("star"), topic, routing_key="a.*"),
        "hash": lib.Queue(names("hash"), topic, routing_key="a.#"),
        "fan": lib.Queue(names("fanq"), fanout),
        "all": lib.Queue(names("all"), headers, binding_arguments={"x-match": "all", "k": "v", "n": 1}),
        "any": lib.Queue(names("any"), headers, binding_arguments={"x-match": "any", "k": "v", "n": 1}),
    }
    for queue in queues.values():
        await queue(conn.default_channel).declare()
    producer = lib.Producer(conn)
    for key in ("a", "a.b", "a.b.c", "b.a"):
        await producer.publish(key, exchange=topic, routing_key=key)
    await producer.publish("fan", exchange=fanout, routing_key="ignored")
    for n, hdrs in enumerate(({"k": "v", "n": 1}, {"k": "v"}, {"n": 1, "x": 0}, {})):
        await producer.publish(f"h{n}", exchange=headers, headers=hdrs)
    return {
        label: [m.payload for m in await take(queue(conn.default_channel), 10)]
        for label, queue in queues.items()
    }


async def test_topic_fanout_headers_routing(reference_url, subject_url):
    await same(reference_url, subject_url, routing)


# --- Counts, purge, delete ------------------------------------------------------------------------------


async def counts_purge_delete(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(5):
        await producer.publish(n, routing_key=queue.name)
    ready = await count(queue, 5)
    consumers = (await queue.queue_declare(passive=True)).consumer_count
    first = await queue.get()
    purged = await queue.purge()
    await first.requeue()
    return {
        "declared": (ready, consumers),
        "purged": purged,
        "after_requeue": await count(queue, 1),
        "deleted": await queue.delete(),
    }


async def test_counts_purge_and_delete(reference_url, subject_url):
    await same(reference_url, subject_url, counts_purge_delete)


# --- Ordering: priorities and requeues --------------------------------------------------------------------


async def priority_order(lib, conn, names):
    queue = await declared(lib, conn, names, max_priority=5)
    producer = lib.Producer(conn)
    for n, priority in enumerate([1, 5, 3, 5, 0, 9, 3]):
        await producer.publish(f"{n}/{priority}", routing_key=queue.name, priority=priority)
    await count(queue, 7)
    return [m.payload for m in await take(queue, 10)]


async def test_priority_order(reference_url, subject_url):
    await same(reference_url, subject_url, priority_order)


async def requeue_place(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(4):
        await producer.publish(n, routing_key=queue.name)
    taken = await take(queue, 3, ack=False)
    await taken[1].requeue()
    await taken[0].reject(requeue=True)
    await taken[2].ack()
    await count(queue, 3)
    return [(m.payload, m.delivery_info["redelivered"]) for m in await take(queue, 10)]


async def test_requeued_messages_return_to_their_place(reference_url, subject_url):
    await same(reference_url, subject_url, requeue_place)


async def requeue_priority_order(lib, conn, names):
    queue = await declared(lib, conn, names, max_priority=5)
    producer = lib.Producer(conn)
    for n in range(4):
        await producer.publish(n, routing_key=queue.name, priority=2)
    for message in await take(queue, 3, ack=False):
        await message.requeue()
    await count(queue, 4)
    return [m.payload for m in await take(queue, 10)]


async def test_requeued_messages_of_one_priority_keep_their_order(reference_url, subject_url):
    await same(reference_url, subject_url, requeue_priority_order)


# --- TTL and dead letters ----------------------------------------------------------------------------------


async def expiry(lib, conn, names):
    queue = await declared(lib, conn, names)
    short = await declared(lib, conn, names, message_ttl=0.05)
    producer = lib.Producer(conn)
    await producer.publish("short", routing_key=queue.name, expiration=0.05)
    await producer.publish("long", routing_key=queue.name, expiration=60)
    await producer.publish("queue ttl", routing_key=short.name)
    # Expiry is the one thing only wall-clock time shows; then the survivors are counted by polling.
    await sleep(0.3)
    await count(queue, 1)
    await count(short, 0)
    return [m.payload for m in await take(queue, 5)], await take(short, 5)


async def test_expired_messages_are_not_delivered(reference_url, subject_url):
    await same(reference_url, subject_url, expiry)


async def dead_letter(lib, conn, names):
    dead = await declared(lib, conn, names)
    # queue_arguments, not kelp's dead_letter_exchange shortcut: Kombu's Queue ignores that name.
    source = await declared(
        lib,
        conn,
        names,
        queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name},
    )
    await lib.Producer(conn).publish({"doomed": True}, routing_key=source.name, headers={"mine": 1})
    [message] = await take(source, 1, ack=False)
    await message.reject(requeue=False)
    [letter] = await wait_take(dead, 1)
    return letter


async def test_dead_letter_history(reference_url, subject_url):
    await same(reference_url, subject_url, dead_letter)


# --- Errors ----------------------------------------------------------------------------------------------


async def channel_errors(lib, conn, names):
    missing = names("missing")
    queue = await declared(lib, conn, names, durable=True)
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    await exchange(conn.default_channel).declare()
    await lib.Producer(conn).publish("keep", routing_key=queue.name)
    return {
        "passive_queue": await attempt(lambda: on_new_channel(conn, "queue_declare", missing, passive=True)),
        "passive_exchange": await attempt(
            lambda: on_new_channel(conn, "exchange_declare", missing, "direct", passive=True)
        ),
        "redeclare_queue": await attempt(
            lambda: on_new_channel(conn, "queue_declare", queue.name, durable=False)
        ),
        "redeclare_exchange": await attempt(
            lambda: on_new_channel(conn, "exchange_declare", exchange.name, "topic", durable=False)
        ),
        "delete_if_empty": await attempt(
            lambda: on_new_channel(conn, "queue_delete", queue.name, if_empty=True)
        ),
        "bind_missing": await attempt(lambda: on_new_channel(conn, "queue_bind", queue.name, missing, "k")),
    }


async def test_channel_errors(reference_url, subject_url):
    await same(reference_url, subject_url, channel_errors)


async def message_state_errors(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    await producer.publish(1, routing_key=queue.name)
    await producer.publish(2, routing_key=queue.name)
    first, second = await take(queue, 2, ack=False)
    await first.ack()
    await second.reject()
    return {
        "ack_twice": await attempt(first.ack),
        "reject_acked": await attempt(first.reject),
        "requeue_rejected": await attempt(second.requeue),
        "states": (first.acknowledged, first._state if hasattr(first, "_state") else first.state),
        "left": await queue.get(),
    }


async def test_message_state_errors(reference_url, subject_url):
    await same(reference_url, subject_url, message_state_errors)


# --- Consumer, maybe_declare, SimpleQueue ---------------------------------------------------------------


async def callbacks_and_prefetch(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(5):
        await producer.publish({"n": n}, routing_key=queue.name)
    seen: list[Any] = []
    channel = await conn.channel()
    consumer = lib.Consumer(channel, [queue], callbacks=[lambda body, message: seen.append((body, message))])
    await consumer.qos(prefetch_count=2)
    await consumer.consume()
    await drain_until(conn, lambda: len(seen) >= 2)
    held = len(seen)
    acked = 0

    async def ack_new() -> None:
        nonlocal acked
        for _, message in seen[acked:]:
            await message.ack()
        acked = len(seen)

    await ack_new()
    while len(seen) < 5 and await drain_until(conn, lambda: len(seen) > acked):
        await ack_new()
    await ack_new()
    await consumer.cancel()
    return {
        "held_before_acks": held,
        "bodies": [body for body, _ in seen],
        "redelivered": [m.delivery_info["redelivered"] for _, m in seen],
        "routing_keys": [m.delivery_info["routing_key"] == queue.name for _, m in seen],
    }


async def test_consumer_callbacks_and_prefetch(reference_url, subject_url):
    await same(reference_url, subject_url, callbacks_and_prefetch)


async def maybe_declare(lib, conn, names):
    durable = lib.Queue(names("q"), durable=True)
    auto = lib.Queue(names("q"), auto_delete=True)
    channel = conn.default_channel
    return [
        await lib.common.maybe_declare(durable, channel),
        await lib.common.maybe_declare(durable, channel),
        await lib.common.maybe_declare(auto, channel),
        await lib.common.maybe_declare(auto, channel),
    ]


async def test_maybe_declare(reference_url, subject_url):
    await same(reference_url, subject_url, maybe_declare)


async def simple_queue(lib, conn, names):
    simple = conn.SimpleQueue(names("simple"))
    await simple.put({"n": 1})
    await simple.put("two", serializer="json", headers={"h": 1})
    await simple.put(b"three")
    size = await count(simple.queue(simple.channel), 3)
    # get_nowait before get: once get() consumes, Kombu's get_nowait no longer sees the messages its
    # consumer received (docs/migrating-from-kombu.md).
    first = await simple.get_nowait()
    await first.ack()
    second = await simple.get(timeout=2)
    await second.ack()
    cleared = await simple.clear()
    empty = await attempt(lambda: simple.get(timeout=0.2))
    empty_nowait = await attempt(simple.get_nowait)
    await simple.close()
    return {
        "size": size,
        "first": first,
        "second": second,
        "cleared": cleared,
        "empty": empty,
        "nowait": empty_nowait,
    }


async def test_simple_queue(reference_url, subject_url):
    await same(reference_url, subject_url, simple_queue)


# --- Entities: exchange-to-exchange bindings, bind_to / unbind_from, declare on publish ---------------


async def exchange_bindings(lib, conn, names):
    channel = conn.default_channel
    upstream = lib.Exchange(names("up"), "topic", durable=False)(channel)
    downstream = lib.Exchange(names("down"), "fanout", durable=False)(channel)
    await upstream.declare()
    await downstream.declare()
    await downstream.bind_to(upstream, routing_key="news.#")
    queue = lib.Queue(names("q"), downstream)(channel)
    await queue.declare()
    other = lib.Queue(names("q"))(channel)
    await other.declare()
    await other.bind_to(upstream, routing_key="*.sport")
    producer = lib.Producer(conn)
    for key in ("news", "news.sport", "weather.sport", "weather"):
        await producer.publish(key, exchange=upstream, routing_key=key)
    first = ([m.payload for m in await take(queue, 10)], [m.payload for m in await take(other, 10)])
    await downstream.unbind_from(upstream, routing_key="news.#")
    await other.unbind_from(upstream, routing_key="*.sport")
    await producer.publish("news.sport", exchange=upstream, routing_key="news.sport")
    return first, await take(queue, 10), await take(other, 10)


async def test_exchange_bindings_and_unbinding(reference_url, subject_url):
    await same(reference_url, subject_url, exchange_bindings)


async def declare_on_publish(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    queue = lib.Queue(names("q"), exchange, routing_key="k")
    producer = lib.Producer(conn, exchange=exchange, auto_declare=False)
    await producer.publish("declared", routing_key="k", declare=[queue])
    bound = queue(conn.default_channel)
    return await take(bound, 5), (await bound.queue_declare(passive=True))[1:]


async def test_publish_declares_what_it_is_told(reference_url, subject_url):
    await same(reference_url, subject_url, declare_on_publish)


async def on_message_recover_cancel(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(3):
        await producer.publish(n, routing_key=queue.name)
    channel = await conn.channel()
    received: list[Any] = []
    consumer = lib.Consumer(channel, [queue], on_message=received.append)
    await consumer.consume()
    await drain_until(conn, lambda: len(received) >= 3)
    first = [(m.payload, m.delivery_info["redelivered"]) for m in received]
    await consumer.recover(requeue=True)
    await drain_until(conn, lambda: len(received) >= 6)
    again = sorted((m.payload, m.delivery_info["redelivered"]) for m in received[3:])
    for message in received[3:]:
        await message.ack()
    await consumer.cancel()
    ready = await count(queue, 0)
    return first, again, (ready, (await queue.queue_declare(passive=True)).consumer_count)


async def test_consumer_on_message_recover_and_cancel(reference_url, subject_url):
    await same(reference_url, subject_url, on_message_recover_cancel)


async def delete_queue_under_unacked(lib, conn, names):
    """A queue deleted while a consumer holds one of its messages unacked, then declared again under the
    same name: recover and reject must not carry the old message into the new queue (RabbitMQ drops it)."""
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(2):
        await producer.publish(n, routing_key=queue.name)
    channel = await conn.channel()
    await channel.basic_qos(0, 2, False)
    received: list[Any] = []
    consumer = lib.Consumer(channel, [queue], on_message=received.append)
    await consumer.consume()
    await drain_until(conn, lambda: len(received) >= 2)
    await consumer.cancel()
    await queue.delete()
    await queue.declare()
    await producer.publish("fresh", routing_key=queue.name)
    await received[0].reject(requeue=True)
    await channel.basic_recover(requeue=True)
    got = [m.payload for m in await take(queue, 5)]
    return [m.payload for m in received], got


async def test_deleted_queue_keeps_no_unacked_message(reference_url, subject_url):
    await same(reference_url, subject_url, delete_queue_under_unacked)
