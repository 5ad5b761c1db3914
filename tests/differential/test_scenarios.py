"""Scenarios over Kombu's public API, run under Kombu on RabbitMQ and under kelp on each transport.

Each scenario returns what a program would observe; the harness turns it into plain data and the two runs
must be equal (see conftest.py and harness.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .harness import KELP, KOMBU, Failed, Names, Scenario, attempt, run


def same(reference_url: str, subject_url: str, scenario: Scenario) -> None:
    expected = run(KOMBU, reference_url, scenario)
    actual = run(KELP, subject_url, scenario)
    assert actual == expected


def _queue(lib: Any, conn: Any, names: Names, **kwargs: Any) -> Any:
    queue = lib.Queue(names("q"), **kwargs)(conn.default_channel)
    queue.declare()
    return queue


def _take(queue: Any, n: int, ack: bool = True, accept: list[str] | None = None) -> list[Any]:
    got = []
    for _ in range(n):
        message = queue.get(accept=accept)
        if message is None:
            break
        if ack:
            message.ack()
        got.append(message)
    return got


def _wait_take(queue: Any, n: int, timeout: float = 3.0) -> list[Any]:
    """Take ``n`` messages, polling: RabbitMQ moves dead letters and requeues asynchronously."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(_take(queue, n - len(got)))
        if len(got) < n:
            time.sleep(0.02)
    return got


def _settle() -> None:
    # RabbitMQ applies publishes, acks and requeues asynchronously: give counts time to catch up.
    time.sleep(0.2)


def _raw(body: Any) -> Any:
    # py-amqp hands Kombu a str body when content_encoding is a text encoding, kelp always bytes:
    # compare the content (the type difference is in docs/migrating-from-kombu.md).
    return body.encode("utf-8") if isinstance(body, str) else body


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


@pytest.mark.parametrize(("body", "serializer"), BODIES)
def test_publish_and_get_round_trip(reference_url, subject_url, body, serializer):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        lib.Producer(conn).publish(body, routing_key=queue.name, serializer=serializer)
        [message] = _take(queue, 1)
        # The exact bytes only for bodies sent as they are: kelp's JSON is compact and unescaped UTF-8,
        # Kombu's spaced and ASCII-escaped (docs/migrating-from-kombu.md); both decode alike.
        return message, _raw(message.body) if serializer is None and isinstance(body, str | bytes) else None

    same(reference_url, subject_url, scenario)


# An unknown compression name is left out: Kombu raises a bare KeyError, kelp EncodeError (documented).
@pytest.mark.parametrize("compression", ["zlib", "bzip2", "gzip", "lzma"])
def test_compression(reference_url, subject_url, compression):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        published = attempt(
            lambda: lib.Producer(conn).publish(
                {"big": "x" * 500}, routing_key=queue.name, compression=compression
            )
        )
        # What publish returns is transport-specific in Kombu (a promise on py-amqp): compare only failures.
        published = published if isinstance(published, Failed) else "published"
        message = queue.get()
        return published, message, None if message is None else message.headers.get("compression")

    same(reference_url, subject_url, scenario)


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


@pytest.mark.parametrize("properties", PROPERTY_SETS)
def test_message_properties(reference_url, subject_url, properties):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        body = b"opaque" if "content_type" in properties else {"p": 1}
        lib.Producer(conn).publish(body, routing_key=queue.name, **properties)
        [message] = _take(queue, 1, accept=["json", properties.get("content_type", "json")])
        return message

    same(reference_url, subject_url, scenario)


def test_producer_defaults_and_exchange_routing(reference_url, subject_url):
    def scenario(lib, conn, names):
        exchange = lib.Exchange(names("x"), "direct", durable=False)
        queue = lib.Queue(names("q"), exchange, routing_key="rk")(conn.default_channel)
        queue.declare()
        producer = lib.Producer(conn, exchange=exchange, routing_key="rk", serializer="json")
        producer.publish({"n": 1})
        producer.publish({"n": 2}, routing_key="other")
        producer.publish({"n": 3}, routing_key="rk", headers={"h": "v"})
        return _take(queue, 3)

    same(reference_url, subject_url, scenario)


# --- Routing ------------------------------------------------------------------------------------------


def test_topic_fanout_headers_routing(reference_url, subject_url):
    def scenario(lib, conn, names):
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
            label: [m.payload for m in _take(queue(conn.default_channel), 10)]
            for label, queue in queues.items()
        }

    same(reference_url, subject_url, scenario)


# --- Counts, purge, delete ------------------------------------------------------------------------------


def test_counts_purge_and_delete(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        producer = lib.Producer(conn)
        for n in range(5):
            producer.publish(n, routing_key=queue.name)
        _settle()
        declared = queue.queue_declare(passive=True)
        first = queue.get()
        purged = queue.purge()
        first.requeue()
        _settle()
        after = queue.queue_declare(passive=True)
        return {
            "declared": (declared.message_count, declared.consumer_count),
            "purged": purged,
            "after_requeue": after.message_count,
            "deleted": queue.delete(),
        }

    same(reference_url, subject_url, scenario)


# --- Ordering: priorities and requeues --------------------------------------------------------------------


def test_priority_order(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names, max_priority=5)
        producer = lib.Producer(conn)
        for n, priority in enumerate([1, 5, 3, 5, 0, 9, 3]):
            producer.publish(f"{n}/{priority}", routing_key=queue.name, priority=priority)
        return [m.payload for m in _take(queue, 10)]

    same(reference_url, subject_url, scenario)


def test_requeued_messages_return_to_their_place(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        producer = lib.Producer(conn)
        for n in range(4):
            producer.publish(n, routing_key=queue.name)
        taken = _take(queue, 3, ack=False)
        taken[1].requeue()
        taken[0].reject(requeue=True)
        taken[2].ack()
        _settle()
        return [(m.payload, m.delivery_info["redelivered"]) for m in _take(queue, 10)]

    same(reference_url, subject_url, scenario)


def test_requeued_messages_of_one_priority_keep_their_order(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names, max_priority=5)
        producer = lib.Producer(conn)
        for n in range(4):
            producer.publish(n, routing_key=queue.name, priority=2)
        taken = _take(queue, 3, ack=False)
        for message in taken:
            message.requeue()
        _settle()
        return [m.payload for m in _take(queue, 10)]

    same(reference_url, subject_url, scenario)


# --- TTL and dead letters ----------------------------------------------------------------------------------


def test_expired_messages_are_not_delivered(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        short = _queue(lib, conn, names, message_ttl=0.05)
        producer = lib.Producer(conn)
        producer.publish("short", routing_key=queue.name, expiration=0.05)
        producer.publish("long", routing_key=queue.name, expiration=60)
        producer.publish("queue ttl", routing_key=short.name)
        time.sleep(0.4)
        return [m.payload for m in _take(queue, 5)], _take(short, 5)

    same(reference_url, subject_url, scenario)


def test_dead_letter_history(reference_url, subject_url):
    def scenario(lib, conn, names):
        dead = _queue(lib, conn, names)
        # queue_arguments, not kelp's dead_letter_exchange shortcut: Kombu's Queue ignores that name.
        source = _queue(
            lib,
            conn,
            names,
            queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead.name},
        )
        lib.Producer(conn).publish({"doomed": True}, routing_key=source.name, headers={"mine": 1})
        [message] = _take(source, 1, ack=False)
        message.reject(requeue=False)
        [letter] = _wait_take(dead, 1)
        return letter

    same(reference_url, subject_url, scenario)


# --- Errors ----------------------------------------------------------------------------------------------


def test_channel_errors(reference_url, subject_url):
    def scenario(lib, conn, names):
        missing = names("missing")
        queue = _queue(lib, conn, names, durable=True)
        exchange = lib.Exchange(names("x"), "direct", durable=False)
        exchange(conn.default_channel).declare()
        lib.Producer(conn).publish("keep", routing_key=queue.name)
        return {
            "passive_queue": attempt(lambda: conn.channel().queue_declare(missing, passive=True)),
            "passive_exchange": attempt(
                lambda: conn.channel().exchange_declare(missing, "direct", passive=True)
            ),
            "redeclare_queue": attempt(lambda: conn.channel().queue_declare(queue.name, durable=False)),
            "redeclare_exchange": attempt(
                lambda: conn.channel().exchange_declare(exchange.name, "topic", durable=False)
            ),
            "delete_if_empty": attempt(lambda: conn.channel().queue_delete(queue.name, if_empty=True)),
            "bind_missing": attempt(lambda: conn.channel().queue_bind(queue.name, missing, "k")),
        }

    same(reference_url, subject_url, scenario)


def test_message_state_errors(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        producer = lib.Producer(conn)
        producer.publish(1, routing_key=queue.name)
        producer.publish(2, routing_key=queue.name)
        first, second = _take(queue, 2, ack=False)
        first.ack()
        second.reject()
        return {
            "ack_twice": attempt(first.ack),
            "reject_acked": attempt(first.reject),
            "requeue_rejected": attempt(second.requeue),
            "states": (first.acknowledged, first._state if hasattr(first, "_state") else first.state),
            "left": queue.get(),
        }

    same(reference_url, subject_url, scenario)


# --- Consumer, maybe_declare, SimpleQueue ---------------------------------------------------------------


def test_consumer_callbacks_and_prefetch(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        producer = lib.Producer(conn)
        for n in range(5):
            producer.publish({"n": n}, routing_key=queue.name)
        seen: list[Any] = []
        channel = conn.channel()
        consumer = lib.Consumer(
            channel, [queue], callbacks=[lambda body, message: seen.append((body, message))]
        )
        consumer.qos(prefetch_count=2)
        consumer.consume()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        held = len(seen)
        for _, message in seen:
            message.ack()
        while len(seen) < 5 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
                for _, message in seen:
                    if not message.acknowledged:
                        message.ack()
            except TimeoutError:
                pass
        for _, message in seen:
            if not message.acknowledged:
                message.ack()
        consumer.cancel()
        return {
            "held_before_acks": held,
            "bodies": [body for body, _ in seen],
            "redelivered": [m.delivery_info["redelivered"] for _, m in seen],
            "routing_keys": [m.delivery_info["routing_key"] == queue.name for _, m in seen],
        }

    same(reference_url, subject_url, scenario)


def test_maybe_declare(reference_url, subject_url):
    def scenario(lib, conn, names):
        durable = lib.Queue(names("q"), durable=True)
        auto = lib.Queue(names("q"), auto_delete=True)
        channel = conn.default_channel
        return [
            lib.common.maybe_declare(durable, channel),
            lib.common.maybe_declare(durable, channel),
            lib.common.maybe_declare(auto, channel),
            lib.common.maybe_declare(auto, channel),
        ]

    same(reference_url, subject_url, scenario)


def test_simple_queue(reference_url, subject_url):
    def scenario(lib, conn, names):
        simple = conn.SimpleQueue(names("simple"))
        simple.put({"n": 1})
        simple.put("two", serializer="json", headers={"h": 1})
        simple.put(b"three")
        time.sleep(0.1)
        size = simple.qsize()
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

    same(reference_url, subject_url, scenario)


# --- Entities: exchange-to-exchange bindings, bind_to / unbind_from, declare on publish ---------------


def test_exchange_bindings_and_unbinding(reference_url, subject_url):
    def scenario(lib, conn, names):
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
        first = ([m.payload for m in _take(queue, 10)], [m.payload for m in _take(other, 10)])
        downstream.unbind_from(upstream, routing_key="news.#")
        other.unbind_from(upstream, routing_key="*.sport")
        producer.publish("news.sport", exchange=upstream, routing_key="news.sport")
        return first, _take(queue, 10), _take(other, 10)

    same(reference_url, subject_url, scenario)


def test_publish_declares_what_it_is_told(reference_url, subject_url):
    def scenario(lib, conn, names):
        exchange = lib.Exchange(names("x"), "direct", durable=False)
        queue = lib.Queue(names("q"), exchange, routing_key="k")
        producer = lib.Producer(conn, exchange=exchange, auto_declare=False)
        producer.publish("declared", routing_key="k", declare=[queue])
        bound = queue(conn.default_channel)
        return _take(bound, 5), bound.queue_declare(passive=True)[1:]

    same(reference_url, subject_url, scenario)


def test_consumer_on_message_recover_and_cancel(reference_url, subject_url):
    def scenario(lib, conn, names):
        queue = _queue(lib, conn, names)
        producer = lib.Producer(conn)
        for n in range(3):
            producer.publish(n, routing_key=queue.name)
        channel = conn.channel()
        received: list[Any] = []
        consumer = lib.Consumer(channel, [queue], on_message=received.append)
        consumer.consume()
        deadline = time.monotonic() + 5
        while len(received) < 3 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        first = [(m.payload, m.delivery_info["redelivered"]) for m in received]
        consumer.recover(requeue=True)
        while len(received) < 6 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
        again = sorted((m.payload, m.delivery_info["redelivered"]) for m in received[3:])
        for message in received[3:]:
            message.ack()
        consumer.cancel()
        _settle()
        return first, again, queue.queue_declare(passive=True)[1:]

    same(reference_url, subject_url, scenario)
