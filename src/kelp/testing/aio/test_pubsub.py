"""Publish/subscribe on a topic exchange: each subscriber sees exactly what its patterns select."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Exchange, Queue, binding

from .helpers import Names, consuming, declared, drain_for, take_all

pytestmark = pytest.mark.kelp_needs("topic")

EVENTS = ["user.created", "user.deleted", "order.created", "order.item.added", "order.paid", "audit"]


async def test_subscribers_get_what_their_patterns_select(broker_url: str, names: Names) -> None:
    events = Exchange(names("events"), "topic")
    subscriptions = {
        "users": ["user.*"],
        "created": ["*.created"],
        "orders": ["order.#"],
        "everything": ["#"],
        "mixed": ["user.deleted", "order.*.added"],
        "nothing": ["billing.#"],
    }
    async with Connection(broker_url) as conn:
        queues = {
            name: await declared(conn, Queue(names(name), bindings=[binding(events, p) for p in patterns]))
            for name, patterns in subscriptions.items()
        }
        producer = conn.Producer()
        for key in EVENTS:
            await producer.publish({"event": key}, exchange=events, routing_key=key)
        got = {name: [p["event"] for p in await take_all(bq)] for name, bq in queues.items()}
        assert got == {
            "users": ["user.created", "user.deleted"],
            "created": ["user.created", "order.created"],
            "orders": ["order.created", "order.item.added", "order.paid"],
            "everything": EVENTS,
            "mixed": ["user.deleted", "order.item.added"],
            "nothing": [],
        }


async def test_live_subscribers_on_separate_connections(broker_url: str, names: Names) -> None:
    events = Exchange(names("events"), "topic")
    async with (
        Connection(broker_url) as publisher,
        Connection(broker_url) as a,
        Connection(broker_url) as b,
        consuming(a, [Queue(names("a"), events, routing_key="order.#")]) as orders,
        consuming(b, [Queue(names("b"), events, routing_key="*.created")]) as created,
    ):
        producer = publisher.Producer()
        for key in EVENTS:
            await producer.publish(key, exchange=events, routing_key=key)
        assert await orders.wait(a, 3)
        assert await created.wait(b, 2)
        await drain_for(a, 0.1)
        await drain_for(b, 0.1)
        assert orders.bodies == ["order.created", "order.item.added", "order.paid"]
        assert created.bodies == ["user.created", "order.created"]
        assert [m.delivery_info["routing_key"] for m in orders.messages] == orders.bodies


async def test_unsubscribing_one_pattern_keeps_the_others(broker_url: str, names: Names) -> None:
    events = Exchange(names("events"), "topic")
    async with Connection(broker_url) as conn:
        bq = await declared(
            conn, Queue(names("q"), bindings=[binding(events, "user.*"), binding(events, "order.*")])
        )
        await bq.unbind_from(events, routing_key="user.*")
        producer = conn.Producer()
        for key in EVENTS:
            await producer.publish(key, exchange=events, routing_key=key)
        assert await take_all(bq) == ["order.created", "order.paid"]
