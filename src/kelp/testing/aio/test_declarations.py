"""Declaring, inspecting and deleting exchanges and queues, and the errors the broker answers with.

An operation the broker refuses closes its channel on AMQP, so each one here runs on a fresh channel."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Consumer, Exchange, Queue
from kelp.exceptions import NotFound, PreconditionFailed, ResourceLocked

from .helpers import (
    Names,
    consuming,
    count_becomes,
    declared,
    fetch,
    message_count,
    payloads,
    queue_exists,
    queue_gone,
)

pytestmark = pytest.mark.kelp_needs("fanout", "topic")


async def test_passive_declare_of_missing_queue_raises_not_found(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        channel = await conn.channel()
        with pytest.raises(NotFound):
            await Queue(names("missing"))(channel).queue_declare(passive=True)


async def test_passive_declare_of_missing_exchange_raises_not_found(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        channel = await conn.channel()
        with pytest.raises(NotFound):
            await Exchange(names("missing"), "direct")(channel).declare(passive=True)


async def test_passive_declare_of_existing_entities_succeeds(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        q = Queue(names("q"), ex, routing_key="#")
        await declared(conn, q)
        channel = await conn.channel()
        await Exchange(ex.name, "topic")(channel).declare(passive=True)
        result = await Queue(q.name)(channel).queue_declare(passive=True)
        assert result.queue == q.name
        assert result.message_count == 0
        assert result.consumer_count == 0


async def test_queue_declare_reports_message_and_consumer_counts(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        busy = Queue(names("q"))
        await declared(conn, busy)
        backlog = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=backlog.name)
        assert await count_becomes(backlog, 3)
        async with consuming(conn, [busy]):
            result = await Queue(busy.name)(conn.default_channel).queue_declare(passive=True)
            assert result.consumer_count == 1
            assert result.message_count == 0


async def test_identical_redeclare_is_a_no_op(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), ex, routing_key="k", max_length=10, message_ttl=60)
        bq = await declared(conn, q)
        await conn.Producer().publish("kept", exchange=ex, routing_key="k")
        assert await q(conn.default_channel).declare() == q.name
        await Exchange(ex.name, "direct")(conn.default_channel).declare()
        assert await payloads(bq, 1) == ["kept"]


INEQUIVALENT_QUEUES = [
    ({"max_length": 5}, {"max_length": 6}),
    ({"message_ttl": 1}, {"message_ttl": 2}),
    ({"durable": True}, {"durable": False}),
    ({}, {"max_priority": 4}),
]


@pytest.mark.parametrize(("first", "second"), INEQUIVALENT_QUEUES)
async def test_redeclare_queue_with_other_arguments_fails(
    broker_url: str, names: Names, first: Any, second: Any
) -> None:
    async with Connection(broker_url) as conn:
        name = names("q")
        await declared(conn, Queue(name, **first))
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed):
            await Queue(name, **second)(channel).declare()


@pytest.mark.parametrize(
    ("first", "second"),
    [({"type": "direct"}, {"type": "fanout"}), ({"type": "topic"}, {"type": "topic", "durable": False})],
)
async def test_redeclare_exchange_with_other_type_or_flags_fails(
    broker_url: str, names: Names, first: Any, second: Any
) -> None:
    async with Connection(broker_url) as conn:
        name = names("ex")
        await declared(conn, Exchange(name, **first))
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed):
            await Exchange(name, **second)(channel).declare()


async def test_server_named_queue_gets_a_unique_generated_name(broker_url: str) -> None:
    async with Connection(broker_url) as conn:
        first = Queue("", exclusive=True)(conn.default_channel)
        second = Queue("", exclusive=True)(conn.default_channel)
        name = await first.declare()
        assert name
        assert first.name == name
        await second.declare()
        assert second.name
        assert second.name != name
        await conn.Producer().publish("to generated", routing_key=name)
        assert await payloads(first, 1) == ["to generated"]


async def test_exclusive_queue_is_locked_to_its_connection(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as owner:
        q = Queue(names("q"), exclusive=True)
        await declared(owner, q)
        async with Connection(broker_url) as other:
            with pytest.raises(ResourceLocked):
                await Queue(q.name, exclusive=True)(await other.channel()).declare()
            with pytest.raises(ResourceLocked):
                await Queue(q.name)(await other.channel()).get()
            consumer = Consumer(await other.channel(), [Queue(q.name)], auto_declare=False)
            with pytest.raises(ResourceLocked):
                await consumer.consume()


async def test_exclusive_queue_is_deleted_with_its_connection(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as observer:
        name = names("q")
        async with Connection(broker_url) as owner:
            await declared(owner, Queue(name, exclusive=True))
            assert await queue_exists(observer, name)
        assert await queue_gone(observer, name)


async def test_auto_delete_queue_goes_when_its_last_consumer_cancels(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"), auto_delete=True)
        await declared(conn, q)
        assert await queue_exists(conn, q.name)  # no consumer yet: not deleted
        first = conn.Consumer([q])
        second = conn.Consumer([q])
        await first.consume()
        await second.consume()
        await first.cancel()
        assert await queue_exists(conn, q.name)
        await second.cancel()
        assert await queue_gone(conn, q.name)


async def test_delete_if_unused_refuses_while_consumed(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]):
            with pytest.raises(PreconditionFailed):
                await Queue(q.name)(await conn.channel()).delete(if_unused=True)
            assert await queue_exists(conn, q.name)
        await Queue(q.name)(await conn.channel()).delete(if_unused=True)
        assert await queue_gone(conn, q.name)


async def test_delete_if_empty_refuses_while_messages_remain(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("still here", routing_key=bq.name)
        with pytest.raises(PreconditionFailed):
            await Queue(bq.name)(await conn.channel()).delete(if_empty=True)
        assert await payloads(Queue(bq.name)(await conn.channel()), 1) == ["still here"]
        await Queue(bq.name)(await conn.channel()).delete(if_empty=True)
        assert await queue_gone(conn, bq.name)


async def test_delete_removes_queue_and_messages(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        bq = await declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        await producer.publish("gone with the queue", exchange=ex)
        await bq.delete()
        assert await queue_gone(conn, bq.name)
        # Redeclared, it is a new empty queue, and its old binding went with the old one.
        fresh = await declared(conn, Queue(bq.name))
        await producer.publish("unrouted", exchange=ex)
        assert await message_count(fresh) == 0
        assert await fresh.get() is None


async def test_delete_exchange(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = await declared(conn, Exchange(names("ex"), "direct"))
        await ex.delete()
        channel = await conn.channel()
        with pytest.raises(NotFound):
            await Exchange(ex.name, "direct")(channel).declare(passive=True)


async def test_purge_returns_the_number_of_messages_removed(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=bq.name)
        assert await bq.purge() == 3
        assert await bq.get() is None
        assert await bq.purge() == 0
        await producer.publish("after purge", routing_key=bq.name)
        assert await payloads(bq, 1) == ["after purge"]


async def test_purge_leaves_unacked_messages_alone(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=bq.name)
        async with Connection(broker_url) as taker:
            [held] = await fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            assert held.payload == 0
            assert await bq.purge() == 2
        # The unacked one was released when the taker closed.
        [back] = await fetch(bq, 1)
        assert back.payload == 0
        assert back.redelivered is True


async def test_binding_to_a_missing_exchange_raises_not_found(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        channel = await conn.channel()
        with pytest.raises(NotFound):
            await Queue(bq.name)(channel).bind_to(Exchange(names("missing"), "direct"), routing_key="k")


async def test_consuming_a_missing_queue_raises_not_found(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        channel = await conn.channel()
        consumer = Consumer(channel, [Queue(names("missing"))], auto_declare=False)
        with pytest.raises(NotFound):
            await consumer.consume()
