"""Kombu's ``Connection`` conveniences and ``entity`` classes beyond routing, compared with Kombu on RabbitMQ
(the sync twin under Kombu and kelp, this source under ``kelp.aio``)."""

from __future__ import annotations

from typing import Any

from .helpers import attempt, count, declared, on_new_channel, same, take


async def connection_conveniences(lib, conn, names):
    queue = await declared(lib, conn, names)
    producer = lib.Producer(conn)
    ensured = conn.ensure(producer, producer.publish, max_retries=1)
    await ensured("ensured", routing_key=queue.name)
    seen: list[Any] = []

    async def publish_on(body: Any, routing_key: str, channel: Any = None) -> str:
        seen.append(channel is conn.default_channel)
        await lib.Producer(channel).publish(body, routing_key=routing_key)
        return "done"

    result, channel = await conn.autoretry(publish_on)("retried", routing_key=queue.name)
    other = await conn.channel()
    result_on_other, channel_used = await conn.autoretry(publish_on, channel=other)("on other", queue.name)
    await count(queue, 3)
    clone = conn.clone()
    return {
        "autoretry": (result, channel is conn.default_channel, result_on_other, channel_used is other, seen),
        "default channel is kept": conn.default_channel is conn.default_channel,
        "channels differ": other is not conn.default_channel,
        "clone": (type(clone).__name__, clone.connected, clone.hostname == conn.hostname),
        "got": [m.payload for m in await take(queue, 5)],
    }


async def test_connection_ensure_autoretry_clone(reference_url, subject_url):
    await same(reference_url, subject_url, connection_conveniences)


def _set(attributes: dict[str, Any]) -> dict[str, Any]:
    # Unset attributes are None in Kombu and {} (arguments) in kelp (docs/migrating-from-kombu.md).
    return {k: v for k, v in attributes.items() if v not in (None, False, "", {}, [])}


async def entity_dicts(lib, conn, names):
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


async def test_entity_as_dict_and_defaults(reference_url, subject_url):
    await same(reference_url, subject_url, entity_dicts)


async def queue_with_bindings(lib, conn, names):
    first = lib.Exchange(names("x"), "direct", durable=False)
    second = lib.Exchange(names("x"), "topic", durable=False)
    queue = lib.Queue(
        names("q"), bindings=[lib.binding(first, routing_key="a"), lib.binding(second, routing_key="b.#")]
    )(conn.default_channel)
    await queue.declare()
    producer = lib.Producer(conn)
    await producer.publish("first a", exchange=first, routing_key="a")
    await producer.publish("first b", exchange=first, routing_key="b")
    await producer.publish("second b.c", exchange=second, routing_key="b.c")
    await producer.publish("second a", exchange=second, routing_key="a")
    await count(queue, 2)
    return [m.payload for m in await take(queue, 5)]


async def test_queue_with_several_bindings(reference_url, subject_url):
    await same(reference_url, subject_url, queue_with_bindings)


async def exchange_message_and_publish(lib, conn, names):
    exchange = lib.Exchange(names("x"), "direct", durable=False)(conn.default_channel)
    await exchange.declare()
    queue = lib.Queue(names("q"), exchange, "k")(conn.default_channel)
    await queue.declare()
    # With an encoding: without one Kombu decodes the body as UTF-8 and kelp keeps bytes (documented).
    message = exchange.Message(
        b"built", content_type="application/data", content_encoding="binary", headers={"h": 1}, priority=3
    )
    await exchange.publish(message, routing_key="k")
    await count(queue, 1)
    [got] = await take(queue, 1)
    return got


async def test_exchange_message_and_publish(reference_url, subject_url):
    await same(reference_url, subject_url, exchange_message_and_publish)


async def no_declare_and_broker_refusals(lib, conn, names):
    missing = lib.Queue(names("nodeclare"), no_declare=True)
    consumer = lib.Consumer(await conn.channel(), [missing], auto_declare=True)
    not_declared = await attempt(consumer.consume)
    queue = await declared(lib, conn, names)
    busy = lib.Consumer(await conn.channel(), [queue])
    await busy.consume()
    in_use = await attempt(lambda: on_new_channel(conn, "queue_delete", queue.name, if_unused=True))
    await busy.cancel()
    exclusive = lib.Queue(names("excl"), exclusive=True)(conn.default_channel)
    await exclusive.declare()
    other = conn.clone()
    try:
        locked = await attempt(lambda: on_new_channel(other, "queue_declare", exclusive.name, passive=True))
    finally:
        await other.close()
    return {
        "no_declare": not_declared,
        "in use": in_use,
        "exclusive elsewhere": locked,
        "reserved name": await attempt(
            lambda: on_new_channel(conn, "queue_declare", "amq.kelp-diff-reserved")
        ),
    }


async def test_no_declare_and_broker_refusals(reference_url, subject_url):
    await same(reference_url, subject_url, no_declare_and_broker_refusals)


async def ack_unknown_tag(conn: Any, queue_name: str) -> None:
    # RabbitMQ answers a bad ack by closing the channel, which the next synchronous call sees.
    channel = await conn.channel()
    await channel.basic_ack(999)
    await channel.queue_declare(queue_name, passive=True)


async def issue_examples(lib, conn, names):
    queue = await declared(lib, conn, names)
    headers_exchange = lib.Exchange(names("hdr"), "headers", durable=False)
    await headers_exchange(conn.default_channel).declare()
    loose = lib.Exchange(None)
    unknown_keywords = await attempt(lambda: lib.Queue(names("q"), durable=False, not_a_kombu_option=1).name)
    await lib.Producer(conn).publish({"p": 1}, routing_key=queue.name, cluster_id="cluster-7", priority=2)
    [message] = await take(queue, 1)
    bad_match = await attempt(
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
        "unknown delivery tag": await attempt(lambda: ack_unknown_tag(conn, queue.name)),
    }


async def test_issue_examples(reference_url, subject_url):
    await same(reference_url, subject_url, issue_examples)
