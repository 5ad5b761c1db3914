"""SimpleQueue and SimpleBuffer: the queue.Queue-like interface over a named queue."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from kelp.aio import Connection, SimpleBuffer, SimpleQueue

from .helpers import Names, eventually


async def test_put_then_get_round_trips_the_payload(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        await q.put({"hello": "world", "n": [1, 2]})
        message = await q.get(timeout=5)
        assert message.payload == {"hello": "world", "n": [1, 2]}
        await message.ack()
        assert message.acknowledged is True


async def test_get_preserves_order(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        for n in range(10):
            await q.put(n)
        got = []
        for _ in range(10):
            message = await q.get(timeout=5)
            got.append(message.payload)
            await message.ack()
        assert got == list(range(10))


async def test_get_on_empty_queue_raises_empty_after_timeout(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            await q.get(timeout=0.2)
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 3.0


async def test_get_nowait(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        with pytest.raises(q.Empty):
            await q.get_nowait()
        await q.put("now")
        message = await q.get_nowait()
        assert message.payload == "now"
        await message.ack()
        with pytest.raises(q.Empty):
            await q.get_nowait()


async def test_empty_is_queue_empty() -> None:
    assert SimpleQueue.Empty is queue.Empty
    assert SimpleBuffer.Empty is queue.Empty


async def test_qsize_and_clear(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        assert await q.qsize() == 0
        for n in range(4):
            await q.put(n)

        async def all_counted() -> Any:
            return await q.qsize() == 4

        assert await eventually(all_counted)  # a count may lag just-published messages
        assert await q.clear() == 4
        assert await q.qsize() == 0
        with pytest.raises(q.Empty):
            await q.get(timeout=0.1)


async def test_put_with_headers_and_properties(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        await q.put("with extras", headers={"trace": "abc"}, correlation_id="c-1")
        message = await q.get(timeout=5)
        assert message.payload == "with extras"
        assert message.headers["trace"] == "abc"
        assert message.properties["correlation_id"] == "c-1"
        await message.ack()


async def test_put_with_serializer_and_compression(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        await q.put({"big": "x" * 1000}, serializer="json", compression="zlib")
        message = await q.get(timeout=5)
        assert message.payload == {"big": "x" * 1000}
        await message.ack()


async def test_two_handles_on_one_name_share_the_queue(broker_url: str, names: Names) -> None:
    name = names("sq")
    async with (
        Connection(broker_url) as producer_conn,
        Connection(broker_url) as consumer_conn,
        producer_conn.SimpleQueue(name) as sender,
        consumer_conn.SimpleQueue(name) as receiver,
    ):
        await sender.put("across connections")
        message = await receiver.get(timeout=5)
        assert message.payload == "across connections"
        await message.ack()


async def test_unacked_get_is_redelivered_after_close(broker_url: str, names: Names) -> None:
    name = names("sq")
    async with Connection(broker_url) as anchor:
        async with anchor.SimpleQueue(name) as q:
            await q.put("retry")
        async with Connection(broker_url) as first, first.SimpleQueue(name) as q:
            message = await q.get(timeout=5)
            assert message.payload == "retry"
            assert message.redelivered is False
        async with Connection(broker_url) as second, second.SimpleQueue(name) as q:
            message = await q.get(timeout=5)
            assert message.payload == "retry"
            assert message.redelivered is True
            await message.ack()


async def test_simple_buffer_put_get_without_acks(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleBuffer(names("sb")) as buffer:
        for n in range(3):
            await buffer.put({"n": n})
        got = [(await buffer.get(timeout=5)).payload for _ in range(3)]
        assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
        with pytest.raises(buffer.Empty):
            await buffer.get_nowait()


async def test_simple_buffer_messages_are_transient(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, conn.SimpleBuffer(names("sb")) as buffer:
        await buffer.put("fleeting")
        message = await buffer.get(timeout=5)
        assert message.payload == "fleeting"
        assert message.properties["delivery_mode"] == 1
