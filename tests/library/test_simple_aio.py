"""SimpleQueue / SimpleBuffer, asyncio face."""

from __future__ import annotations

import asyncio
import time

import pytest

from kelp.aio import Connection
from kelp.aio.simple import Empty, SimpleBuffer, SimpleQueue
from kelp.exceptions import NotFound


async def test_put_get_qsize_clear(url, name):
    async with Connection(url) as conn, SimpleQueue(conn, name) as q:
        assert await q.qsize() == 0
        for n in range(3):
            await q.put({"n": n})
        assert await q.qsize() == 3
        message = await q.get(timeout=5)
        assert message.payload == {"n": 0}
        await message.ack()
        await q.close()  # the two buffered messages go back
        assert await q.clear() == 2
        assert await q.qsize() == 0


async def test_put_without_entering_declares_the_queue(url, name):
    async with Connection(url) as conn:
        q = conn.SimpleQueue(name)
        await q.put("declared on demand")
        assert await q.qsize() == 1
        message = await q.get_nowait()
        assert message.payload == "declared on demand"
        await message.ack()
        await q.close()


async def test_get_times_out_and_nonblocking(url, name):
    async with Connection(url) as conn, SimpleQueue(conn, name) as q:
        started = time.monotonic()
        with pytest.raises(Empty):
            await q.get(timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 2
        with pytest.raises(q.Empty):
            await q.get(block=False)
        with pytest.raises(q.Empty):
            await q.get_nowait()


async def test_get_waits_for_a_message_published_later(url, name):
    async with (
        Connection(url) as conn,
        Connection(url) as other,
        SimpleQueue(conn, name) as q,
        SimpleQueue(other, name) as sender,
    ):
        waiter = asyncio.create_task(q.get(timeout=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await sender.put("late")
        message = await asyncio.wait_for(waiter, 5)
        assert message.payload == "late"
        await message.ack()


async def test_cancelled_get_loses_nothing(url, name):
    async with Connection(url) as conn, SimpleQueue(conn, name) as q:
        waiter = asyncio.create_task(q.get())
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await q.put("after cancel")
        message = await q.get(timeout=5)
        assert message.payload == "after cancel"
        await message.ack()


async def test_close_requeues_in_order(url, name):
    async with Connection(url) as conn:
        async with SimpleQueue(conn, name) as q:
            for n in range(4):
                await q.put(n)
            first = await q.get(timeout=5)
            await first.ack()
        # leaving the block closed q: 1, 2, 3 are ready again, in order
        async with SimpleQueue(conn, name) as q:
            assert await q.qsize() == 3
            got = []
            for _ in range(3):
                message = await q.get(timeout=5)
                got.append((message.payload, message.redelivered))
                await message.ack()
            assert got == [(1, True), (2, True), (3, True)]


async def test_simple_buffer(url, name):
    async with Connection(url) as conn:
        async with SimpleBuffer(conn, name) as buffer:
            for n in range(3):
                await buffer.put(n)
            got = [(await buffer.get(timeout=5)).payload for _ in range(3)]
            assert got == [0, 1, 2]
            with pytest.raises(Empty):
                await buffer.get(timeout=0.05)
        channel = await conn.channel()
        with pytest.raises(NotFound):  # auto_delete: gone with its consumer
            await channel.queue_declare(name, passive=True)
