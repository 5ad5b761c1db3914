"""Connection, channel and producer pools, asyncio face (task-safe)."""

from __future__ import annotations

import asyncio
import time

import pytest

from kelp.aio import Connection, Producer, Queue, pools
from kelp.aio.pools import ChannelPool, ConnectionPool, ProducerPool
from kelp.exceptions import ChannelLimitExceeded, ConnectionLimitExceeded, UsageError


async def test_limit_block_timeout_and_release(url):
    pool = ConnectionPool(Connection(url), limit=1)
    held = await pool.acquire()
    with pytest.raises(ConnectionLimitExceeded):
        await pool.acquire()
    started = time.monotonic()
    with pytest.raises(ConnectionLimitExceeded):
        await pool.acquire(block=True, timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2
    waiter = asyncio.create_task(pool.acquire(block=True, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await held.release()
    assert await asyncio.wait_for(waiter, 5) is held
    await held.release()
    await pool.force_close_all()


async def test_async_with_connects_and_releases(url, name):
    pool = Connection(url).Pool(limit=1)
    async with await pool.acquire() as conn:
        assert conn.connected
        await conn.default_channel.queue_declare(name)
    async with await pool.acquire(block=True, timeout=1) as again:
        assert again is conn
        assert again.connected
    async with pool.acquire_channel() as (conn2, channel):
        assert conn2 is conn
        assert channel is conn.default_channel
    await pool.force_close_all()
    assert not conn.connected
    with pytest.raises(UsageError):
        await pool.acquire()


async def test_cancelled_waiter_does_not_take_a_slot(url):
    pool = ConnectionPool(Connection(url), limit=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool.acquire(block=True))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await held.release()
    assert await pool.acquire() is held
    await held.release()


async def test_tasks_share_a_pool_within_its_limit(url):
    pool = ConnectionPool(Connection(url), limit=2)
    holding = 0
    peak = 0

    async def work():
        nonlocal holding, peak
        for _ in range(10):
            async with await pool.acquire(block=True, timeout=5):
                holding += 1
                peak = max(peak, holding)
                await asyncio.sleep(0.001)
                holding -= 1

    await asyncio.wait_for(asyncio.gather(*(work() for _ in range(6))), 10)
    assert peak == 2
    await pool.force_close_all()


async def test_channel_pool_preload_and_limit(url, name):
    async with Connection(url) as conn:
        pool = ChannelPool(conn, limit=2, preload=2)
        first = await pool.acquire()
        assert len(pool._idle) == 1
        second = await pool.acquire()
        with pytest.raises(ChannelLimitExceeded):
            await pool.acquire()
        async with second:
            await Producer(second).publish("hi", routing_key=name, declare=[Queue(name)])
        assert await pool.acquire() is second
        message = await Queue(name).bind(first).get()
        assert message is not None
        assert message.payload == "hi"
        await message.ack()
        await pool.force_close_all()
        assert not first.is_open
        assert not second.is_open


async def test_producer_registry(url, name):
    try:
        assert pools.producers[Connection(url)] is pools.producers[Connection(url)]
        async with await pools.producers[Connection(url)].acquire(block=True) as producer:
            await producer.publish({"via": "pool"}, routing_key=name, declare=[Queue(name)])
        async with Connection(url) as conn:
            message = await Queue(name).bind(conn.default_channel).get()
            assert message is not None
            assert message.payload == {"via": "pool"}
            await message.ack()
    finally:
        await pools.reset()
    assert len(pools.producers) == 0
    assert len(pools.connections) == 0


async def test_producer_pool_holds_a_connection_while_acquired(url, name):
    connections = ConnectionPool(Connection(url), limit=1)
    producers = ProducerPool(connections, limit=1)
    producer = await producers.acquire()
    with pytest.raises(ConnectionLimitExceeded):
        await connections.acquire()
    await producer.release()
    conn = await connections.acquire()
    await conn.release()
    await producers.force_close_all()
    await connections.force_close_all()


async def test_set_limit(url):
    previous = pools.get_limit()
    try:
        pool = pools.connections[Connection(url)]
        assert await pools.set_limit(3) == 3
        assert pool.limit == 3
        assert pools.get_limit() == 3
    finally:
        await pools.set_limit(previous)
        await pools.reset()
