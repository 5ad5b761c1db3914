"""Consumers and ``drain_events``: callbacks, ``on_message``, several queues, cancel, and the idle
timeout (``socket.timeout``)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from kelp.aio import Connection, Queue

from .helpers import Names, consuming, declared, drain_for, drain_until, fetch


async def test_drain_events_times_out_when_idle(broker_url: str) -> None:
    async with Connection(broker_url) as conn:
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            await conn.drain_events(timeout=0.1)
        assert time.monotonic() - started < 3.0


async def test_drain_events_times_out_with_an_idle_consumer(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, consuming(conn, [Queue(names("q"))]) as inbox:
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            await conn.drain_events(timeout=0.15)
        elapsed = time.monotonic() - started
        assert 0.1 <= elapsed < 3.0
        assert len(inbox) == 0


async def test_drain_events_returns_after_dispatching(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish("ready", routing_key=q.name)
            started = time.monotonic()
            while not inbox.messages and time.monotonic() - started < 5:
                try:
                    await conn.drain_events(timeout=5)
                except TimeoutError:
                    pass
            assert inbox.bodies == ["ready"]
            await inbox.messages[0].ack()


async def test_callbacks_run_in_order_with_body_and_message(broker_url: str, names: Names) -> None:
    calls: list[tuple[Any, ...]] = []
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        consumer = conn.Consumer([q], callbacks=[lambda body, message: calls.append(("first", body))])
        consumer.register_callback(lambda body, message: calls.append(("second", body, message.payload)))
        async with consumer:
            await conn.Producer().publish({"x": 1}, routing_key=q.name)
            assert await drain_until(conn, lambda: len(calls) >= 2)
        assert calls == [("first", {"x": 1}), ("second", {"x": 1}, {"x": 1})]


async def test_on_message_replaces_callbacks(broker_url: str, names: Names) -> None:
    seen: list[Any] = []
    called: list[Any] = []
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        consumer = conn.Consumer(
            [q], callbacks=[lambda body, message: called.append(body)], on_message=seen.append
        )
        async with consumer:
            await conn.Producer().publish("to on_message", routing_key=q.name)
            assert await drain_until(conn, lambda: bool(seen))
            await drain_for(conn, 0.05)
            assert called == []
            assert [m.payload for m in seen] == ["to on_message"]
            await seen[0].ack()


async def test_one_consumer_several_queues(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        queues = [Queue(names("q")) for _ in range(3)]
        async with consuming(conn, queues) as inbox:
            producer = conn.Producer()
            for q in queues:
                await producer.publish(q.name, routing_key=q.name)
            assert await inbox.wait(conn, 3)
            assert sorted(inbox.bodies) == sorted(q.name for q in queues)
            assert sorted(m.delivery_info["routing_key"] for m in inbox.messages) == sorted(inbox.bodies)
            for message in inbox.messages:
                await message.ack()


async def test_cancel_stops_deliveries_and_leaves_messages_queued(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        bq = await declared(conn, q)
        got = []
        consumer = conn.Consumer([q], callbacks=[lambda body, message: got.append(message)])
        await consumer.consume()
        producer = conn.Producer()
        await producer.publish("while consuming", routing_key=q.name)
        assert await drain_until(conn, lambda: bool(got))
        await got[0].ack()
        await consumer.cancel()
        await producer.publish("after cancel", routing_key=q.name)
        await drain_for(conn)
        assert [m.payload for m in got] == ["while consuming"]
        assert [m.payload for m in await fetch(bq, 1)] == ["after cancel"]


async def test_two_consumers_on_one_queue_share_the_work(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, Connection(broker_url) as a, Connection(broker_url) as b:
        q = Queue(names("q"))
        await declared(conn, q)
        async with (
            consuming(a, [q], prefetch_count=1) as first,
            consuming(b, [q], prefetch_count=1) as second,
        ):
            producer = conn.Producer()
            for n in range(20):
                await producer.publish(n, routing_key=q.name)

            deadline = time.monotonic() + 10
            while len(first) + len(second) < 20 and time.monotonic() < deadline:
                for worker_conn, inbox in ((a, first), (b, second)):
                    await drain_for(worker_conn, 0.02)
                    for message in inbox.messages:
                        if not message.acknowledged:
                            await message.ack()
                assert len(first) + len(second) <= 20
            assert sorted(first.bodies + second.bodies) == list(range(20))
            assert first.bodies == sorted(first.bodies)
            assert second.bodies == sorted(second.bodies)
            assert first.bodies
            assert second.bodies
