# Generated from tests/differential/aio/test_scenarios.py by scripts/unasync.py; do not edit.
"""Scenarios over Kombu's public API: the sync twin runs under Kombu on RabbitMQ and under kelp on each
transport, this source under ``kelp``; the three observations must be equal (see ``helpers.same``).

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


def round_trip(lib, conn, names, body, serializer):
    queue = declared(lib, conn, names)
    lib.Producer(conn).publish(body, routing_key=queue.name, serializer=serializer)
    [message] = take(queue, 1)
    # The exact bytes only for bodies sent as they are: kelp's JSON is compact and unescaped UTF-8,
    # Kombu's spaced and ASCII-escaped (docs/migrating-from-kombu.md); both decode alike.
    return message, raw(message.body) if serializer is None and isinstance(body, str | bytes) else None


@pytest.mark.parametrize(("body", "serializer"), BODIES)
def test_publish_and_get_round_trip(reference_url, subject_url, body, serializer):
    same(reference_url, subject_url, round_trip, body, serializer)


def compressed(lib, conn, names, compression):
    queue = declared(lib, conn, names)
    published = attempt(
        lambda: lib.Producer(conn).publish(
            {"big": "x" * 500}, routing_key=queue.name, compression=compression
        )
    )
    # What publish returns is transport-specific in Kombu (a promise on py-amqp): compare only failures.
    published = published if isinstance(published, Failed) else "published"
    message = queue.get()
    return published, message, None if message is None else message.headers.get("compression")


# An unknown compression name is left out: Kombu raises a bare KeyError, kelp EncodeError (documented).
@pytest.mark.parametrize("compression", ["zlib", "bzip2", "gzip", "lzma"])
def test_compression(reference_url, subject_url, compression):
    same(reference_url, subject_url, compressed, compression)


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


def with_properties(lib, conn, names, properties):
    queue = declared(lib, conn, names)
    body = b"opaque" if "content_type" in properties else {"p": 1}
    lib.Producer(conn).publish(body, routing_key=queue.name, **properties)
    [message] = take(queue, 1, accept=["json", properties.get("content_type", "json")])
    return message


@pytest.mark.parametrize("properties", PROPERTY_SETS)
def test_message_properties(reference_url, subject_url, properties):
    same(reference_url, subject_url, with_properties, properties)


def producer_defaults(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    queue = lib.Queue(names("q"), exchange, routing_key="rk")(conn.default_channel)
    queue.declare()
    producer = lib.Producer(conn, exchange=exchange, routing_key="rk", serializer="json")
    producer.publish({"n": 1})
    producer.publish({"n": 2}, routing_key="other")
    producer.publish({"n": 3}, routing_key="rk", headers={"h": "v"})
    return take(queue, 3)


def test_producer_defaults_and_exchange_routing(reference_url, subject_url):
    same(reference_url, subject_url, producer_defaults)


# --- Routing ------------------------------------------------------------------------------------------


def routing(lib, conn, names):
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
        queue(conn.default_channel).declare()
    producer = lib.Producer(conn)
    for key in ("a", "a.b", "a.b.c", "b.a"):
        producer.publish(key, exchange=topic, routing_key=key)
    producer.publish("fan", exchange=fanout, routing_key="ignored")
    for n, hdrs in enumerate(({"k": "v", "n": 1}, {"k": "v"}, {"n": 1, "x": 0}, {})):
        producer.publish(f"h{n}", exchange=headers, headers=hdrs)
    return {
        label: [m.payload for m in take(queue(conn.default_channel), 10)] for label, queue in queues.items()
    }


def test_topic_fanout_headers_routing(reference_url, subject_url):
    same(reference_url, subject_url, routing)


# --- Counts, purge, delete ------------------------------------------------------------------------------


def counts_purge_delete(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(5):
        producer.publish(n, routing_key=queue.name)
    ready = count(queue, 5)
    consumers = (queue.queue_declare(passive=True)).consumer_count
    first = queue.get()
    purged = queue.purge()
    first.requeue()
    return {
        "declared": (ready, consumers),
        "purged": purged,
        "after_requeue": count(queue, 1),
        "deleted": queue.delete(),
    }


def test_counts_purge_and_delete(reference_url, subject_url):
    same(reference_url, subject_url, counts_purge_delete)


# --- Ordering: priorities and requeues --------------------------------------------------------------------


def priority_order(lib, conn, names):
    queue = declared(lib, conn, names, max_priority=5)
    producer = lib.Producer(conn)
    for n, priority in enumerate([1, 5, 3, 5, 0, 9, 3]):
        producer.publish(f"{n}/{priority}", routing_key=queue.name, priority=priority)
    count(queue, 7)
    return [m.payload for m in take(queue, 10)]


def test_priority_order(reference_url, subject_url):
    same(reference_url, subject_url, priority_order)


def requeue_place(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(4):
        producer.publish(n, routing_key=queue.name)
    taken = take(queue, 3, ack=False)
    taken[1].requeue()
    taken[0].reject(requeue=True)
    taken[2].ack()
    count(queue, 3)
    return [(m.payload, m.delivery_info["redelivered"]) for m in take(queue, 10)]


def test_requeued_messages_return_to_their_place(reference_url, subject_url):
    same(reference_url, subject_url, requeue_place)


def requeue_priority_order(lib, conn, names):
    queue = declared(lib, conn, names, max_priority=5)
    producer = lib.Producer(conn)
    for n in range(4):
        producer.publish(n, routing_key=queue.name, priority=2)
    for message in take(queue, 3, ack=False):
        message.requeue()
    count(queue, 4)
    return [m.payload for m in take(queue, 10)]


def test_requeued_messages_of_one_priority_keep_their_order(reference_url, subject_url):
    same(reference_url, subject_url, requeue_priority_order)


# --- TTL and dead letters ----------------------------------------------------------------------------------


def expiry(lib, conn, names):
    queue = declared(lib, conn, names)
    short = declared(lib, conn, names, message_ttl=0.05)
    producer = lib.Producer(conn)
    producer.publish("short", routing_key=queue.name, expiration=0.05)
    producer.publish("long", routing_key=queue.name, expiration=60)
    producer.publish("queue ttl", routing_key=short.name)
    # Expiry is the one thing only wall-clock time shows; then the survivors are counted by polling.
    sleep(0.3)
    count(queue, 1)
    count(short, 0)
    return [m.payload for m in take(queue, 5)], take(short, 5)


def test_expired_messages_are_not_delivered(reference_url, subject_url):
    same(reference_url, subject_url, expiry)


def dead_letter(lib, conn, names):
    dead = declared(lib, conn, names)
    # queue_arguments, not kelp's dead_letter_exchange shortcut: Kombu's Queue ignores that name.
    source = declared(
        lib,
        conn,
        names,
        queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name},
    )
    lib.Producer(conn).publish({"doomed": True}, routing_key=source.name, headers={"mine": 1})
    [message] = take(source, 1, ack=False)
    message.reject(requeue=False)
    [letter] = wait_take(dead, 1)
    return letter


def test_dead_letter_history(reference_url, subject_url):
    same(reference_url, subject_url, dead_letter)


# --- Errors ----------------------------------------------------------------------------------------------


def channel_errors(lib, conn, names):
    missing = names("missing")
    queue = declared(lib, conn, names, durable=True)
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    exchange(conn.default_channel).declare()
    lib.Producer(conn).publish("keep", routing_key=queue.name)
    return {
        "passive_queue": attempt(lambda: on_new_channel(conn, "queue_declare", missing, passive=True)),
        "passive_exchange": attempt(
            lambda: on_new_channel(conn, "exchange_declare", missing, "direct", passive=True)
        ),
        "redeclare_queue": attempt(lambda: on_new_channel(conn, "queue_declare", queue.name, durable=False)),
        "redeclare_exchange": attempt(
            lambda: on_new_channel(conn, "exchange_declare", exchange.name, "topic", durable=False)
        ),
        "delete_if_empty": attempt(lambda: on_new_channel(conn, "queue_delete", queue.name, if_empty=True)),
        "bind_missing": attempt(lambda: on_new_channel(conn, "queue_bind", queue.name, missing, "k")),
    }


def test_channel_errors(reference_url, subject_url):
    same(reference_url, subject_url, channel_errors)


def message_state_errors(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    producer.publish(1, routing_key=queue.name)
    producer.publish(2, routing_key=queue.name)
    first, second = take(queue, 2, ack=False)
    first.ack()
    second.reject()
    return {
        "ack_twice": attempt(first.ack),
        "reject_acked": attempt(first.reject),
        "requeue_rejected": attempt(second.requeue),
        "states": (first.acknowledged, first._state if hasattr(first, "_state") else first.state),
        "left": queue.get(),
    }


def test_message_state_errors(reference_url, subject_url):
    same(reference_url, subject_url, message_state_errors)


# --- Consumer, maybe_declare, SimpleQueue ---------------------------------------------------------------


def callbacks_and_prefetch(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(5):
        producer.publish({"n": n}, routing_key=queue.name)
    seen: list[Any] = []
    channel = conn.channel()
    consumer = lib.Consumer(channel, [queue], callbacks=[lambda body, message: seen.append((body, message))])
    consumer.qos(prefetch_count=2)
    consumer.consume()
    drain_until(conn, lambda: len(seen) >= 2)
    held = len(seen)
    acked = 0

    def ack_new() -> None:
        nonlocal acked
        for _, message in seen[acked:]:
            message.ack()
        acked = len(seen)

    ack_new()
    while len(seen) < 5 and drain_until(conn, lambda: len(seen) > acked):
        ack_new()
    ack_new()
    consumer.cancel()
    return {
        "held_before_acks": held,
        "bodies": [body for body, _ in seen],
        "redelivered": [m.delivery_info["redelivered"] for _, m in seen],
        "routing_keys": [m.delivery_info["routing_key"] == queue.name for _, m in seen],
    }


def test_consumer_callbacks_and_prefetch(reference_url, subject_url):
    same(reference_url, subject_url, callbacks_and_prefetch)


def maybe_declare(lib, conn, names):
    durable = lib.Queue(names("q"), durable=True)
    auto = lib.Queue(names("q"), auto_delete=True)
    channel = conn.default_channel
    return [
        lib.common.maybe_declare(durable, channel),
        lib.common.maybe_declare(durable, channel),
        lib.common.maybe_declare(auto, channel),
        lib.common.maybe_declare(auto, channel),
    ]


def test_maybe_declare(reference_url, subject_url):
    same(reference_url, subject_url, maybe_declare)


def simple_queue(lib, conn, names):
    simple = conn.SimpleQueue(names("simple"))
    simple.put({"n": 1})
    simple.put("two", serializer="json", headers={"h": 1})
    simple.put(b"three")
    size = count(simple.queue(simple.channel), 3)
    # get_nowait before get: once get() consumes, Kombu's get_nowait no longer sees the messages its
    # consumer received (docs/migrating-from-kombu.md).
    first = simple.get_nowait()
    first.ack()
    second = simple.get(timeout=2)
    second.ack()
    cleared = simple.clear()
    empty = attempt(lambda: simple.get(timeout=0.2))
    empty_nowait = attempt(simple.get_nowait)
    simple.close()
    return {
        "size": size,
        "first": first,
        "second": second,
        "cleared": cleared,
        "empty": empty,
        "nowait": empty_nowait,
    }


def test_simple_queue(reference_url, subject_url):
    same(reference_url, subject_url, simple_queue)


# --- Entities: exchange-to-exchange bindings, bind_to / unbind_from, declare on publish ---------------


def exchange_bindings(lib, conn, names):
    channel = conn.default_channel
    upstream = lib.Exchange(names("up"), "topic", durable=False)(channel)
    downstream = lib.Exchange(names("down"), "fanout", durable=False)(channel)
    upstream.declare()
    downstream.declare()
    downstream.bind_to(upstream, routing_key="news.#")
    queue = lib.Queue(names("q"), downstream)(channel)
    queue.declare()
    other = lib.Queue(names("q"))(channel)
    other.declare()
    other.bind_to(upstream, routing_key="*.sport")
    producer = lib.Producer(conn)
    for key in ("news", "news.sport", "weather.sport", "weather"):
        producer.publish(key, exchange=upstream, routing_key=key)
    first = ([m.payload for m in take(queue, 10)], [m.payload for m in take(other, 10)])
    downstream.unbind_from(upstream, routing_key="news.#")
    other.unbind_from(upstream, routing_key="*.sport")
    producer.publish("news.sport", exchange=upstream, routing_key="news.sport")
    return first, take(queue, 10), take(other, 10)


def test_exchange_bindings_and_unbinding(reference_url, subject_url):
    same(reference_url, subject_url, exchange_bindings)


def declare_on_publish(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)
    queue = lib.Queue(names("q"), exchange, routing_key="k")
    producer = lib.Producer(conn, exchange=exchange, auto_declare=False)
    producer.publish("declared", routing_key="k", declare=[queue])
    bound = queue(conn.default_channel)
    return take(bound, 5), (bound.queue_declare(passive=True))[1:]


def test_publish_declares_what_it_is_told(reference_url, subject_url):
    same(reference_url, subject_url, declare_on_publish)


def on_message_recover_cancel(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(3):
        producer.publish(n, routing_key=queue.name)
    channel = conn.channel()
    received: list[Any] = []
    consumer = lib.Consumer(channel, [queue], on_message=received.append)
    consumer.consume()
    drain_until(conn, lambda: len(received) >= 3)
    first = [(m.payload, m.delivery_info["redelivered"]) for m in received]
    consumer.recover(requeue=True)
    drain_until(conn, lambda: len(received) >= 6)
    again = sorted((m.payload, m.delivery_info["redelivered"]) for m in received[3:])
    for message in received[3:]:
        message.ack()
    consumer.cancel()
    ready = count(queue, 0)
    return first, again, (ready, (queue.queue_declare(passive=True)).consumer_count)


def test_consumer_on_message_recover_and_cancel(reference_url, subject_url):
    same(reference_url, subject_url, on_message_recover_cancel)


def delete_queue_under_unacked(lib, conn, names):
    """A queue deleted while a consumer holds one of its messages unacked, then declared again under the
    same name: recover and reject must not carry the old message into the new queue (RabbitMQ drops it)."""
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(2):
        producer.publish(n, routing_key=queue.name)
    channel = conn.channel()
    channel.basic_qos(0, 2, False)
    received: list[Any] = []
    consumer = lib.Consumer(channel, [queue], on_message=received.append)
    consumer.consume()
    drain_until(conn, lambda: len(received) >= 2)
    consumer.cancel()
    queue.delete()
    queue.declare()
    producer.publish("fresh", routing_key=queue.name)
    received[0].reject(requeue=True)
    channel.basic_recover(requeue=True)
    got = [m.payload for m in take(queue, 5)]
    return [m.payload for m in received], got


def test_deleted_queue_keeps_no_unacked_message(reference_url, subject_url):
    same(reference_url, subject_url, delete_queue_under_unacked)
