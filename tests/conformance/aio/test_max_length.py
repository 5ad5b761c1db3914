"""Queue length limits: ``max_length`` / ``max_length_bytes`` drop the oldest messages by default
(drop-head); with ``x-overflow: reject-publish`` the new message is refused instead."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked

from .helpers import count_becomes, declared, payloads, take_all

REJECT_PUBLISH = {"x-overflow": "reject-publish"}


async def _publish_refused(producer, capabilities, body, **kwargs):
    """Publish a message a full queue refuses. Where routing happens inside publish (the transports kelp
    brokers), publish must raise MessageNacked; elsewhere (pipelined confirms) the refusal may come later,
    but at the latest from flush."""
    if capabilities.refusal_raises:
        with pytest.raises(MessageNacked):
            await producer.publish(body, **kwargs)
    else:

        async def publish_and_flush():
            await producer.publish(body, **kwargs)
            await producer.flush()

        with pytest.raises(MessageNacked) as raised:
            await publish_and_flush()
        assert [envelope.body for envelope in raised.value.envelopes] == [
            producer.prepare(body, **kwargs).body
        ]


async def test_max_length_drops_the_oldest(broker_url, names):
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_length=2))
        producer = conn.Producer()
        for n in range(1, 6):
            await producer.publish(n, routing_key=bq.name)
        assert await take_all(bq) == [4, 5]


async def test_max_length_bytes_drops_the_oldest(broker_url, names):
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_length_bytes=10))
        producer = conn.Producer()
        for body in (b"aaaa", b"bbbb", b"cccc"):
            await producer.publish(
                body, routing_key=bq.name, content_type="application/data", content_encoding="binary"
            )
        bodies = []
        while (message := await bq.get()) is not None:
            bodies.append(message.body)
            await message.ack()
        assert bodies == [b"bbbb", b"cccc"]


async def test_reject_publish_refuses_the_newest(broker_url, names, capabilities):
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_length=2, queue_arguments=REJECT_PUBLISH))
        producer = conn.Producer()
        await producer.publish(1, routing_key=bq.name)
        await producer.publish(2, routing_key=bq.name)
        await _publish_refused(producer, capabilities, 3, routing_key=bq.name)
        assert await count_becomes(bq, 2)
        assert await payloads(bq, 1) == [1]
        # Room again: the next publish is taken.
        await producer.publish(4, routing_key=bq.name)
        assert await take_all(bq) == [2, 4]


async def test_reject_publish_still_delivers_to_queues_with_room(broker_url, names, capabilities):
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        full = await declared(conn, Queue(names("q"), ex, max_length=1, queue_arguments=REJECT_PUBLISH))
        roomy = await declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        await producer.publish("first", exchange=ex)
        await _publish_refused(producer, capabilities, "second", exchange=ex)
        assert await take_all(full) == ["first"]
        assert await payloads(roomy, 2) == ["first", "second"]
