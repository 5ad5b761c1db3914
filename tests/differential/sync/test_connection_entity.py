# Generated from tests/differential/aio/test_connection_entity.py by scripts/unasync.py; do not edit.
"""Kombu's ``Connection`` conveniences and ``entity`` classes beyond routing, compared with Kombu on RabbitMQ
(the sync twin under Kombu and kelp, this source under ``kelp``)."""

from __future__ import annotations

from typing import Any

from .helpers import attempt, count, declared, on_new_channel, same, take


def connection_conveniences(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    ensured = conn.ensure(producer, producer.publish, max_retries=1)
    ensured("ensured", routing_key=queue.name)
    seen: list[Any] = []

    def publish_on(body: Any, routing_key: str, channel: Any = None) -> str:
        seen.append(channel is conn.default_channel)
        lib.Producer(channel).publish(body, routing_key=routing_key)
        return "done"

    result, channel = conn.autoretry(publish_on)("retried", routing_key=queue.name)
    other = conn.channel()
    result_on_other, channel_used = conn.autoretry(publish_on, channel=other)("on other", queue.name)
    count(queue, 3)
    clone = conn.clone()
    return {
        "autoretry": (result, channel is conn.default_channel, result_on_other, channel_used is other, seen),
        "default channel is kept": conn.default_channel is conn.default_channel,
        "channels differ": other is not conn.default_channel,
        "clone": (type(clone).__name__, clone.connected, clone.hostname == conn.hostname),
        "got": [m.payload for m in take(queue, 5)],
    }


def test_connection_ensure_autoretry_clone(reference_url, subject_url):
    same(reference_url, subject_url, connection_conveniences)


def _set(attributes: dict[str, Any]) -> dict[str, Any]:
    # Unset attributes are None in Kombu and {} (arguments) in kelp (docs/migrating-from-kombu.md).
    return {k: v for k, v in attributes.items() if v not in (None, False, "", {}, [])}


def entity_dicts(lib, conn, names):
    exchange = lib.Exchange("ex", "topic", durable=False, arguments={"alternate-exchange": "alt"})
    queue = lib.Queue("q", exchange, "a.#", durable=False, max_priority=4, message_ttl=1.5)
    plain_queue = lib.Queue("only")
    bind = lib.binding(exchange, routing_key="b.*")
    return {
        "exchange": _set(exchange.as_dict()),
        "queue": _set(queue.as_dict(recurse=True)),
        "binding": _set(bind.as_dict(recurse=True)),
        "default exchange": (plain_queue.exchange.name, plain_queue.exchange.type, plain_queue.routing_key),
        "equal": (
            exchange == lib.Exchange("ex", "topic", durable=False),
            queue == lib.Queue("q", exchange, "a.#"),
        ),
        "attributes": (
            queue.durable,
            queue.exclusive,
            queue.auto_delete,
            queue.max_priority,
            queue.message_ttl,
        ),
        "queue_arguments": queue.queue_arguments or None,
    }


def test_entity_as_dict_and_defaults(reference_url, subject_url):
    same(reference_url, subject_url, entity_dicts)


def queue_with_bindings(lib, conn, names):
    first = lib.Exchange(names("x"), "direct", durable=False)
    second = lib.Exchange(names("x"), "topic", durable=False)
    queue = lib.Queue(
        names("q"), bindings=[lib.binding(first, routing_key="a"), lib.binding(second, routing_key="b.#")]
    )(conn.default_channel)
    queue.declare()
    producer = lib.Producer(conn)
    producer.publish("first a", exchange=first, routing_key="a")
    producer.publish("first b", exchange=first, routing_key="b")
    producer.publish("second b.c", exchange=second, routing_key="b.c")
    producer.publish("second a", exchange=second, routing_key="a")
    count(queue, 2)
    return [m.payload for m in take(queue, 5)]


def test_queue_with_several_bindings(reference_url, subject_url):
    same(reference_url, subject_url, queue_with_bindings)


def exchange_message_and_publish(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)(conn.default_channel)
    exchange.declare()
    queue = lib.Queue(names("q"), exchange, "k")(conn.default_channel)
    queue.declare()
    # With an encoding: without one Kombu decodes the body as UTF-8 and kelp keeps bytes (documented).
    message = exchange.Message(
        b"built", content_type="application/data", content_encoding="binary", headers={"h": 1}, priority=3
    )
    exchange.publish(message, routing_key="k")
    count(queue, 1)
    [got] = take(queue, 1)
    return got


def test_exchange_message_and_publish(reference_url, subject_url):
    same(reference_url, subject_url, exchange_message_and_publish)


def no_declare_and_broker_refusals(lib, conn, names):
    missing = lib.Queue(names("nodeclare"), no_declare=True)
    consumer = lib.Consumer(conn.channel(), [missing], auto_declare=True)
    not_declared = attempt(consumer.consume)
    queue = declared(lib, conn, names)
    busy = lib.Consumer(conn.channel(), [queue])
    busy.consume()
    in_use = attempt(lambda: on_new_channel(conn, "queue_delete", queue.name, if_unused=True))
    busy.cancel()
    exclusive = lib.Queue(names("excl"), exclusive=True)(conn.default_channel)
    exclusive.declare()
    other = conn.clone()
    try:
        locked = attempt(lambda: on_new_channel(other, "queue_declare", exclusive.name, passive=True))
    finally:
        other.close()
    return {
        "no_declare": not_declared,
        "in use": in_use,
        "exclusive elsewhere": locked,
        "reserved name": attempt(lambda: on_new_channel(conn, "queue_declare", "amq.kelp-diff-reserved")),
    }


def test_no_declare_and_broker_refusals(reference_url, subject_url):
    same(reference_url, subject_url, no_declare_and_broker_refusals)


def ack_unknown_tag(conn: Any, queue_name: str) -> None:
    # RabbitMQ answers a bad ack by closing the channel, which the next synchronous call sees.
    channel = conn.channel()
    channel.basic_ack(999)
    channel.queue_declare(queue_name, passive=True)


def issue_examples(lib, conn, names):
    queue = declared(lib, conn, names)
    headers_exchange = lib.Exchange(names("hdr"), "headers", durable=False)
    headers_exchange(conn.default_channel).declare()
    loose = lib.Exchange(None)
    unknown_keywords = attempt(lambda: lib.Queue(names("q"), durable=False, not_a_kombu_option=1).name)
    lib.Producer(conn).publish({"p": 1}, routing_key=queue.name, cluster_id="cluster-7", priority=2)
    [message] = take(queue, 1)
    bad_match = attempt(
        lambda: on_new_channel(
            conn, "queue_bind", queue.name, headers_exchange.name, "", arguments={"x-match": "bogus"}
        )
    )
    return {
        "Exchange(None)": (loose.name, loose.type),
        "unknown keywords": unknown_keywords.startswith("diff-q-")
        if isinstance(unknown_keywords, str)
        else unknown_keywords,
        "extra property": message.properties.get("cluster_id"),
        # kelp raises InvalidXMatch, a PreconditionFailed (docs/migrating-from-kombu.md).
        "bad x-match": bad_match.isinstance(lib.broker_errors.PreconditionFailed),
        "unknown delivery tag": attempt(lambda: ack_unknown_tag(conn, queue.name)),
    }


def test_issue_examples(reference_url, subject_url):
    same(reference_url, subject_url, issue_examples)
