"""Queue length limits: ``max_length`` / ``max_length_bytes`` drop the oldest messages by default
(drop-head); with ``x-overflow: reject-publish`` the new message is refused instead."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked
from kelp.testing import Capabilities

from .helpers import Names, count_becomes, declared, payloads, take_all

pytestmark = pytest.mark.kelp_needs("max_length", "fanout")

REJECT_PUBLISH = {"x-overflow": "reject-publish"}


async def _publish_refused(producer: Any, capabilities: Capabilities, body: Any, **kwargs: Any) -> None:
    """Publish a message a full queue refuses. Where routing happens inside publish and confirms are not
    pipelined, publish must raise MessageNacked; elsewhere the refusal may come later, at the latest
    from flush, naming the message."""
    if capabilities.refusal_raises:
        with pytest.raises(MessageNacked):
            await producer.publish(body, **kwargs)
    else:
        with pytest.raises(MessageNacked) as raised:
            await _publish_and_flush(producer, body, **kwargs)
        assert [envelope.body for envelope in raised.value.envelopes] == [
            producer.prepare(body, **kwargs).body
        ]


async def _publish_and_flush(producer: Any, body: Any, **kwargs: Any) -> None:
    await producer.publish(body, **kwargs)
    await producer.flush()


async def test_max_length_drops_the_oldest(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_length=2))
        producer = conn.Producer()
        for n in range(1, 6):
            await producer.publish(n, routing_key=bq.name)
        assert await take_all(bq) == [4, 5]


async def test_max_length_bytes_drops_the_oldest(broker_url: str, names: Names) -> None:
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


async def test_reject_publish_refuses_the_newest(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
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


async def test_reject_publish_still_delivers_to_queues_with_room(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        full = await declared(conn, Queue(names("q"), ex, max_length=1, queue_arguments=REJECT_PUBLISH))
        roomy = await declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        await producer.publish("first", exchange=ex)
        await _publish_refused(producer, capabilities, "second", exchange=ex)
        assert await take_all(full) == ["first"]
        assert await payloads(roomy, 2) == ["first", "second"]
