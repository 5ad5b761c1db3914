"""Interoperability with pika: properties and headers survive in both directions; quorum queues, streams."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import kelp
import kelp.aio
from kelp._envelope import Envelope

pika = pytest.importorskip("pika")

HEADERS: dict[str, Any] = {
    "s": "text",
    "i": 42,
    "neg": -7,
    "b": True,
    "nested": {"k": "v"},
    "list": [1, "two"],
}


def test_pika_reads_what_kelp_published(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        properties = {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,
            "priority": 3,
            "correlation_id": "corr-1",
            "reply_to": "replies",
            "expiration": "60000",
            "message_id": "id-1",
            "timestamp": 1_700_000_000,
            "type": "kind",
            "app_id": "kelp-test",
        }
        ch.publish_batch([Envelope(b'{"a": 1}', properties, dict(HEADERS), "", queue)])
    pconn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        _method, props, body = pconn.channel().basic_get(queue, auto_ack=True)
    finally:
        pconn.close()
    assert body == b'{"a": 1}'
    for name, value in properties.items():
        assert getattr(props, name) == value, name
    assert props.headers == HEADERS


def test_kelp_reads_what_pika_published(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    pconn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        pch = pconn.channel()
        pch.queue_declare(queue)
        pch.confirm_delivery()
        props = pika.BasicProperties(
            content_type="text/plain",
            delivery_mode=2,
            priority=1,
            correlation_id="c",
            reply_to="r",
            message_id="m",
            timestamp=1_700_000_001,
            type="t",
            app_id="pika",
            headers=dict(HEADERS),
        )
        pch.basic_publish("", queue, b"hello from pika", props)
    finally:
        pconn.close()
    with kelp.Connection(amqp_url) as conn:
        message = conn.channel().basic_get(queue)
        assert message is not None
        assert message.body == b"hello from pika"
        assert message.headers == HEADERS
        assert message.content_type == "text/plain"
        expected = {
            "delivery_mode": 2,
            "priority": 1,
            "correlation_id": "c",
            "reply_to": "r",
            "message_id": "m",
            "timestamp": 1_700_000_001,
            "type": "t",
            "app_id": "pika",
        }
        assert {k: message.properties.get(k) for k in expected} == expected
        message.ack()


def test_quorum_queue(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = kelp.Queue(
        names("quorum"), durable=True, auto_delete=False, queue_arguments={"x-queue-type": "quorum"}
    )
    with kelp.Connection(amqp_url) as conn:
        producer = conn.Producer()
        producer.publish("first", routing_key=queue.name, declare=[queue])
        producer.flush()  # a quorum queue shows a message once a quorum has it: when it is confirmed
        ch = conn.default_channel
        message = ch.basic_get(queue.name)
        assert message is not None
        assert message.decode() == "first"
        message.requeue()
        again = ch.basic_get(queue.name)
        assert again is not None
        assert again.redelivered
        assert again.headers.get("x-delivery-count") == 1
        again.ack()


async def test_stream_queue_replays_from_the_first_offset(amqp_url: str, names: Callable[[str], str]) -> None:
    name = names("stream")
    async with kelp.aio.Connection(amqp_url) as conn:
        ch = await conn.channel()
        await ch.queue_declare(name, durable=True, auto_delete=False, arguments={"x-queue-type": "stream"})
        await ch.publish_batch([Envelope(b"%d" % i, {}, {}, "", name) for i in range(5)])
        await ch.basic_qos(prefetch_count=10)  # streams need a prefetch
        got: list[bytes] = []

        async def on_message(message: kelp.aio.Message) -> None:
            got.append(message.body)
            await message.ack()

        await ch.basic_consume(name, callback=on_message, arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            try:
                await conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        assert got == [b"0", b"1", b"2", b"3", b"4"]


async def test_aio_confirms_consume_and_ack(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = kelp.aio.Queue(names("q"))
    async with kelp.aio.Connection(amqp_url) as conn:
        producer = conn.Producer()
        for i in range(200):
            await producer.publish({"n": i}, routing_key=queue.name, declare=[queue])
        got: list[Any] = []
        callback = [lambda body, message: got.append(message)]
        async with conn.Consumer([queue], callbacks=callback, prefetch_count=50):
            acked = 0
            while acked < 200:
                await conn.drain_events(timeout=5)
                for message in got[acked:]:
                    await message.ack()
                acked = len(got)
        assert [m.decode()["n"] for m in got] == list(range(200))
