"""Delayed delivery (``countdown`` / ``eta``): the broker holds the message, routed at publish, until its
due time; no consumer or ``get`` sees it earlier and it takes no prefetch slot; among due messages the
order is due time then publish order; TTL counts from the due time; ``cancel_delayed`` withdraws it.

Needs the ``delayed`` feature; ``cancel_delayed``, ``count_delayed`` and ``delayed_expiration`` where a
test uses them (a transport that cannot cancel must say so with UsageError). ``capabilities.delay_slack``
is how late a message may become ready, ``delay_step`` the gap between due times whose order is kept."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue
from kelp.exceptions import UsageError
from kelp.testing import Capabilities

from .helpers import Names, consuming, declared, fetch, sleep, take_all

pytestmark = pytest.mark.kelp_needs("delayed")


async def _stats(conn: Connection, name: str) -> Any:
    for row in await conn.transport.queue_stats():
        if row[0] == name:
            return row
    raise AssertionError(f"queue {name} not in queue_stats")


async def test_a_delayed_message_is_invisible_until_due(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        started = time.time()
        await conn.Producer().publish("later", routing_key=bq.name, countdown=1.0)
        while time.time() < started + 0.9:
            assert await bq.get() is None, "delivered before its due time"
            await sleep(0.05)
        got = await fetch(bq, 1, timeout=1.0 + capabilities.delay_slack)
        assert [m.payload for m in got] == ["later"]
        assert time.time() >= started + 1.0


async def test_a_consumer_never_sees_a_message_early(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        due: dict[int, float] = {}
        for n, delay in enumerate([0.6, 0.3, 0.9]):
            due[n] = time.time() + delay
            await producer.publish(n, routing_key=bq.name, countdown=delay)
        arrived: dict[Any, float] = {}
        async with consuming(conn, [bq]) as inbox:
            assert inbox.consumer is not None
            inbox.consumer.register_callback(lambda body, message: arrived.setdefault(body, time.time()))
            assert await inbox.wait(conn, 3, timeout=1.0 + capabilities.delay_slack + 2)
            for message in inbox.messages:
                await message.ack()
        for n, at in arrived.items():
            assert at >= due[n], f"message {n} arrived {due[n] - at:.3f} s early"
            assert at - due[n] <= capabilities.delay_slack + 1.0


async def test_due_messages_go_by_due_time_then_publish_order(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    step = capabilities.delay_step
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("third", routing_key=bq.name, countdown=2 * step)
        await producer.publish("first", routing_key=bq.name, countdown=step)
        await producer.publish("second", routing_key=bq.name, countdown=step)
        await producer.publish("now", routing_key=bq.name)
        await sleep(2 * step + capabilities.delay_slack)
        assert await take_all(bq) == ["now", "first", "second", "third"]


async def test_a_past_due_time_means_now(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        await conn.Producer().publish("past", routing_key=bq.name, eta=past)
        await conn.Producer().publish("zero", routing_key=bq.name, countdown=0)
        assert [m.payload for m in await fetch(bq, 2, timeout=2)] == ["past", "zero"]


async def test_eta_delays_like_countdown(broker_url: str, names: Names, capabilities: Capabilities) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.6)
        await conn.Producer().publish("at eta", routing_key=bq.name, eta=eta)
        assert await bq.get() is None
        got = await fetch(bq, 1, timeout=0.6 + capabilities.delay_slack + 1)
        assert [m.payload for m in got] == ["at eta"]
        assert datetime.datetime.now(datetime.UTC) >= eta


async def test_a_delayed_message_takes_no_prefetch_slot(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        async with consuming(conn, [bq], prefetch_count=1) as inbox:
            producer = conn.Producer()
            await producer.publish("delayed", routing_key=bq.name, countdown=30)
            await producer.publish("ready", routing_key=bq.name)
            assert await inbox.wait(conn, 1, timeout=2)
            assert inbox.bodies == ["ready"]
            await inbox.messages[0].ack()


async def test_routing_happens_at_publish_through_an_exchange(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        exchange = Exchange(names("fan"), "fanout")
        one = await declared(conn, Queue(names("q"), exchange))
        two = await declared(conn, Queue(names("q"), exchange))
        await conn.Producer(exchange=exchange).publish("both", countdown=0.3)
        assert await one.get() is None
        for bq in (one, two):
            got = await fetch(bq, 1, timeout=0.3 + capabilities.delay_slack + 1)
            assert [m.payload for m in got] == ["both"]


async def test_ttl_counts_from_the_due_time(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), message_ttl=1.0))
        await conn.Producer().publish("kept", routing_key=bq.name, countdown=1.2)
        # Past 1.2 s the message would be long expired if its queue TTL had counted from the publish.
        got = await fetch(bq, 1, timeout=1.2 + capabilities.delay_slack + 0.5)
        assert [m.payload for m in got] == ["kept"]


async def test_per_message_expiration_counts_from_the_due_time(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        if not capabilities.supports("delayed_expiration"):
            with pytest.raises(UsageError, match="expiration"):
                await producer.publish("x", routing_key=bq.name, countdown=0.5, expiration=1)
            return
        await producer.publish("kept", routing_key=bq.name, countdown=0.6, expiration=1.0)
        await producer.publish("dies", routing_key=bq.name, countdown=0.2, expiration=0.1)
        await sleep(0.6 + capabilities.delay_slack)
        assert await take_all(bq) == ["kept"]


async def test_cancel_withdraws_a_delayed_message_from_every_queue(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        exchange = Exchange(names("fan"), "fanout")
        one = await declared(conn, Queue(names("q"), exchange))
        two = await declared(conn, Queue(names("q"), exchange))
        producer = conn.Producer(exchange=exchange)
        if not capabilities.supports("cancel_delayed"):
            message_id = await producer.publish("x", countdown=0.2)
            assert message_id is not None
            with pytest.raises(UsageError, match="cannot cancel"):
                await producer.cancel_delayed(message_id)
            return
        message_id = await producer.publish("cancelled", countdown=0.5)
        kept_id = await producer.publish("kept", countdown=0.5)
        assert message_id
        assert message_id != kept_id
        assert kept_id is not None
        assert await producer.cancel_delayed(message_id) == 2
        assert await producer.cancel_delayed(message_id) == 0  # already gone
        await sleep(0.5 + capabilities.delay_slack)
        assert await take_all(one) == ["kept"]
        assert await take_all(two) == ["kept"]
        assert await producer.cancel_delayed(kept_id) == 0  # delivered: no longer held


@pytest.mark.kelp_needs("cancel_delayed")
async def test_cancel_of_an_unknown_id_is_zero(broker_url: str) -> None:
    async with Connection(broker_url) as conn:
        assert await conn.Producer().cancel_delayed("no-such-message") == 0


@pytest.mark.kelp_needs("count_delayed")
async def test_queue_stats_count_delayed_messages(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=bq.name, countdown=30)
        await producer.publish("ready", routing_key=bq.name)
        stats = await _stats(conn, bq.name)
        assert tuple(stats) == (bq.name, 1, 0, 0)
        assert stats.delayed == 3
        await bq.purge()  # purge drops ready messages only, as RabbitMQ's delayed exchange holds its own
        assert (await _stats(conn, bq.name)).delayed == 3


async def test_deleting_the_queue_drops_its_delayed_messages(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        name = names("q")
        bq = await declared(conn, Queue(name))
        await conn.Producer().publish("gone", routing_key=name, countdown=0.3)
        await bq.delete()
        bq = await declared(conn, Queue(name))
        await sleep(0.3 + capabilities.delay_slack)
        assert await take_all(bq) == []


async def test_bad_countdown_publishes_nothing(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        bad: Any
        for bad in (-1, "10"):
            with pytest.raises(UsageError):
                await conn.Producer().publish("x", routing_key=bq.name, countdown=bad)
        with pytest.raises(UsageError):
            await conn.Producer().publish("x", routing_key=bq.name, eta=datetime.datetime.now())
        await sleep(0.1)
        assert await bq.get() is None


async def test_publish_many_holds_prepared_delayed_envelopes(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        envelopes = [
            producer.prepare("late", routing_key=bq.name, countdown=0.4),
            producer.prepare("early", routing_key=bq.name),
        ]
        await producer.publish_many(envelopes)
        assert [m.payload for m in await fetch(bq, 1, timeout=1)] == ["early"]
        assert await bq.get() is None
        got = await fetch(bq, 1, timeout=0.4 + capabilities.delay_slack + 1)
        assert [m.payload for m in got] == ["late"]
