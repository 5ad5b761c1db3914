"""kelp.aio.common helpers, asyncio face."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from kelp.aio import Connection, Exchange, Producer, Queue
from kelp.aio.common import (
    Broadcast,
    collect_replies,
    drain_consumer,
    eventloop,
    ignore_errors,
    insured,
    itermessages,
    maybe_declare,
    send_reply,
)
from kelp.aio.pools import ConnectionPool
from kelp.exceptions import OperationalError


async def _collect(generator):
    async with contextlib.aclosing(generator) as items:
        return [item async for item in items]


async def test_broadcast_to_several_consumers(url, name):
    async with Connection(url) as a, Connection(url) as b:
        listeners = {a: Broadcast(name), b: Broadcast(name)}
        for conn, listener in listeners.items():
            await maybe_declare(listener, conn.default_channel)
        await Producer(a).publish({"news": 1}, exchange=Exchange(name, "fanout"))
        for conn, listener in listeners.items():
            pairs = await _collect(itermessages(conn, None, listener, limit=1, timeout=2, no_ack=True))
            assert [body for body, _ in pairs] == [{"news": 1}]


async def test_drain_consumer_and_requeue(url, name):
    queue = Queue(name)
    async with Connection(url) as conn:
        for n in range(3):
            await Producer(conn).publish(n, routing_key=name, declare=[queue])
        pairs = await _collect(drain_consumer(conn.Consumer([queue]), limit=1, timeout=2))
        assert [body for body, _ in pairs] == [0]
        await pairs[0][1].ack()
        rest = []
        async for body, message in itermessages(conn, None, queue, limit=2, timeout=2):
            rest.append(body)
            await message.ack()
        assert rest == [1, 2]


async def test_eventloop_ignore_timeouts(url):
    async with Connection(url) as conn:
        with pytest.raises(socket.timeout):
            await _collect(eventloop(conn, limit=1, timeout=0.05))
        assert await _collect(eventloop(conn, limit=2, timeout=0.05, ignore_timeouts=True)) == []


async def test_request_reply_round_trip(url, name):
    requests, replies = Queue(name), Queue(name + ".replies")
    async with Connection(url) as server, Connection(url) as client:
        await maybe_declare(requests, server.default_channel)
        await maybe_declare(replies, client.default_channel)

        async def serve():
            async for body, request in itermessages(server, None, requests, limit=1, timeout=5):
                await send_reply("", request, {"upper": body.upper()})
                await request.ack()

        serving = asyncio.create_task(serve())
        await Producer(client).publish("hello", routing_key=name, reply_to=replies.name, correlation_id="c-9")
        await asyncio.wait_for(serving, 5)
        async for body, reply in itermessages(client, None, replies, limit=1, timeout=2):
            assert body == {"upper": "HELLO"}
            assert reply.properties["correlation_id"] == "c-9"
            await reply.ack()
        await Producer(client).publish(
            "again", routing_key=name, reply_to=replies.name, correlation_id="c-10"
        )
        serving = asyncio.create_task(serve())
        await asyncio.wait_for(serving, 5)
        got = await _collect(collect_replies(client, None, replies, limit=1, timeout=2, no_ack=False))
        assert got == [{"upper": "AGAIN"}]


async def test_ignore_errors_and_insured(url):
    async with Connection(url) as conn:

        async def broken():
            raise OperationalError("lost")

        assert await ignore_errors(conn, broken) is None
        with ignore_errors(conn):
            raise OperationalError("ignored")

    pool = ConnectionPool(Connection(url), limit=1)
    attempts = []

    async def flaky(connection):
        attempts.append(connection)
        if len(attempts) == 1:
            raise OperationalError("dropped (simulated)")
        return "ok"

    assert await insured(pool, flaky, (), {}, errback=lambda exc, interval: None, interval_start=0) == "ok"
    assert len(attempts) == 2
    await pool.force_close_all()
