"""Acknowledgements: a message leaves its queue only when acked; each message settles exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Queue
from kelp.exceptions import MessageStateError

from .helpers import Names, consuming, declared, drain_for, fetch, message_count, payloads


async def test_ack_removes_the_message(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("done", routing_key=bq.name)
        async with Connection(broker_url) as taker:
            [message] = await fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            acknowledged = [message.acknowledged]
            await message.ack()
            acknowledged.append(message.acknowledged)
            assert acknowledged == [False, True]
        # The taker is gone; an unacked message would be back in the queue now.
        assert await bq.get() is None
        assert await message_count(bq) == 0


async def test_unacked_get_survives_its_connection_and_is_redelivered(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish({"id": 7}, routing_key=bq.name)
        async with Connection(broker_url) as taker:
            [message] = await fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            assert message.redelivered is False
        # taker closed without acking: the message is back, flagged.
        [again] = await fetch(bq, 1)
        assert again.payload == {"id": 7}
        assert again.redelivered is True
        assert again.delivery_info["redelivered"] is True
        assert await bq.get() is None


async def test_reject_with_requeue_redelivers_flagged(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish("again", routing_key=q.name)
            assert await inbox.wait(conn, 1)
            first = inbox.messages[0]
            assert first.redelivered is False
            await first.reject(requeue=True)
            assert await inbox.wait(conn, 2)
            second = inbox.messages[1]
            assert inbox.bodies == ["again", "again"]
            assert second.redelivered is True
            assert second.delivery_tag != first.delivery_tag
            await second.ack()
            await drain_for(conn)
            assert len(inbox) == 2


async def test_requeue_redelivers_flagged(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("back", routing_key=bq.name)
        [message] = await fetch(bq, 1, ack=False)
        await message.requeue()
        [again] = await fetch(bq, 1)
        assert again.payload == "back"
        assert again.redelivered is True
        assert await bq.get() is None


async def test_reject_without_requeue_drops(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("bad", routing_key=bq.name)
        await producer.publish("good", routing_key=bq.name)
        [bad] = await fetch(bq, 1, ack=False)
        await bad.reject(requeue=False)
        assert bad.acknowledged is True
        assert await payloads(bq, 1) == ["good"]
        assert await bq.get() is None
    async with Connection(broker_url) as conn:
        assert await Queue(bq.name)(conn.default_channel).get() is None


SETTLE = {
    "ack": lambda message: message.ack(),
    "reject": lambda message: message.reject(requeue=False),
    "requeue": lambda message: message.requeue(),
}


@pytest.mark.parametrize("first", sorted(SETTLE))
@pytest.mark.parametrize("second", sorted(SETTLE))
async def test_message_settles_exactly_once(broker_url: str, names: Names, first: Any, second: Any) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("x", routing_key=bq.name)
        [message] = await fetch(bq, 1, ack=False)
        await SETTLE[first](message)
        assert message.acknowledged is True
        with pytest.raises(MessageStateError):
            await SETTLE[second](message)


async def test_acking_one_message_leaves_the_others(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in (1, 2, 3):
            await producer.publish(n, routing_key=bq.name)
        async with Connection(broker_url) as taker:
            messages = await fetch(Queue(bq.name)(taker.default_channel), 3, ack=False)
            assert [m.payload for m in messages] == [1, 2, 3]
            assert len({m.delivery_tag for m in messages}) == 3
            await messages[1].ack()
        again = await fetch(bq, 2)
        assert sorted(m.payload for m in again) == [1, 3]
        assert all(m.redelivered for m in again)
        assert await bq.get() is None


async def test_no_ack_consumer_removes_messages_without_acks(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        await declared(conn, q)
        producer = conn.Producer()
        async with Connection(broker_url) as taker, consuming(taker, [q], no_ack=True) as inbox:
            for n in range(3):
                await producer.publish(n, routing_key=q.name)
            assert await inbox.wait(taker, 3)
            assert inbox.bodies == [0, 1, 2]
        # Nothing comes back: with no_ack the broker forgot them on delivery.
        assert await Queue(q.name)(conn.default_channel).get() is None


async def test_get_with_no_ack_removes_the_message(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("gone", routing_key=bq.name)
        async with Connection(broker_url) as taker:
            [message] = await fetch(Queue(bq.name)(taker.default_channel), 1, no_ack=True)
            assert message.payload == "gone"
        assert await bq.get() is None
