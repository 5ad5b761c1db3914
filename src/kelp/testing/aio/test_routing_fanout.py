"""Fanout exchanges: every bound queue gets a copy, whatever the routing key."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, count_becomes, declared, payloads

pytestmark = pytest.mark.kelp_needs("fanout")


async def test_fanout_copies_to_every_bound_queue_ignoring_key(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        queues = [await declared(conn, Queue(names("q"), ex, routing_key=key)) for key in ("", "x", "y")]
        producer = conn.Producer()
        await producer.publish({"n": 1}, exchange=ex, routing_key="anything")
        await producer.publish({"n": 2}, exchange=ex)
        for bq in queues:
            assert await payloads(bq, 2) == [{"n": 1}, {"n": 2}]
            assert await bq.get() is None


async def test_fanout_with_one_queue(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        bq = await declared(conn, Queue(names("q"), ex))
        await conn.Producer().publish("solo", exchange=ex, routing_key="k")
        assert await payloads(bq, 1) == ["solo"]
        assert await bq.get() is None


async def test_fanout_without_queues_drops_the_message(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        await declared(conn, ex)
        producer = conn.Producer()
        await producer.publish("nobody listens", exchange=ex)
        # A queue bound afterwards does not see what was dropped before it existed.
        bq = await declared(conn, Queue(names("q"), ex))
        await producer.publish("now someone does", exchange=ex)
        assert await payloads(bq, 1) == ["now someone does"]
        assert await bq.get() is None


async def test_unbound_queue_stops_receiving_but_keeps_its_messages(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        stays = await declared(conn, Queue(names("q"), ex))
        leaves = await declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        await producer.publish(1, exchange=ex)
        await leaves.unbind_from(ex)
        await producer.publish(2, exchange=ex)
        assert await payloads(stays, 2) == [1, 2]
        assert await count_becomes(leaves, 1)
        assert await payloads(leaves, 1) == [1]
