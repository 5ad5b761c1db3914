# Generated from src/kelp/testing/aio/test_simple.py by scripts/unasync.py; do not edit.
"""SimpleQueue and SimpleBuffer: the queue.Queue-like interface over a named queue."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest

from kelp import Connection, SimpleBuffer, SimpleQueue

from .helpers import Names, eventually


def test_put_then_get_round_trips_the_payload(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        q.put({"hello": "world", "n": [1, 2]})
        message = q.get(timeout=5)
        assert message.payload == {"hello": "world", "n": [1, 2]}
        message.ack()
        assert message.acknowledged is True


def test_get_preserves_order(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        for n in range(10):
            q.put(n)
        got = []
        for _ in range(10):
            message = q.get(timeout=5)
            got.append(message.payload)
            message.ack()
        assert got == list(range(10))


def test_get_on_empty_queue_raises_empty_after_timeout(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 3.0


def test_get_nowait(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        with pytest.raises(q.Empty):
            q.get_nowait()
        q.put("now")
        message = q.get_nowait()
        assert message.payload == "now"
        message.ack()
        with pytest.raises(q.Empty):
            q.get_nowait()


def test_empty_is_queue_empty() -> None:
    assert SimpleQueue.Empty is queue.Empty
    assert SimpleBuffer.Empty is queue.Empty


def test_qsize_and_clear(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        assert q.qsize() == 0
        for n in range(4):
            q.put(n)

        def all_counted() -> Any:
            return q.qsize() == 4

        assert eventually(all_counted)  # a count may lag just-published messages
        assert q.clear() == 4
        assert q.qsize() == 0
        with pytest.raises(q.Empty):
            q.get(timeout=0.1)


def test_put_with_headers_and_properties(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        q.put("with extras", headers={"trace": "abc"}, correlation_id="c-1")
        message = q.get(timeout=5)
        assert message.payload == "with extras"
        assert message.headers["trace"] == "abc"
        assert message.properties["correlation_id"] == "c-1"
        message.ack()


def test_put_with_serializer_and_compression(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleQueue(names("sq")) as q:
        q.put({"big": "x" * 1000}, serializer="json", compression="zlib")
        message = q.get(timeout=5)
        assert message.payload == {"big": "x" * 1000}
        message.ack()


def test_two_handles_on_one_name_share_the_queue(broker_url: str, names: Names) -> None:
    name = names("sq")
    with (
        Connection(broker_url) as producer_conn,
        Connection(broker_url) as consumer_conn,
        producer_conn.SimpleQueue(name) as sender,
        consumer_conn.SimpleQueue(name) as receiver,
    ):
        sender.put("across connections")
        message = receiver.get(timeout=5)
        assert message.payload == "across connections"
        message.ack()


def test_unacked_get_is_redelivered_after_close(broker_url: str, names: Names) -> None:
    name = names("sq")
    with Connection(broker_url) as anchor:
        with anchor.SimpleQueue(name) as q:
            q.put("retry")
        with Connection(broker_url) as first, first.SimpleQueue(name) as q:
            message = q.get(timeout=5)
            assert message.payload == "retry"
            assert message.redelivered is False
        with Connection(broker_url) as second, second.SimpleQueue(name) as q:
            message = q.get(timeout=5)
            assert message.payload == "retry"
            assert message.redelivered is True
            message.ack()


def test_simple_buffer_put_get_without_acks(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleBuffer(names("sb")) as buffer:
        for n in range(3):
            buffer.put({"n": n})
        got = [(buffer.get(timeout=5)).payload for _ in range(3)]
        assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
        with pytest.raises(buffer.Empty):
            buffer.get_nowait()


def test_simple_buffer_messages_are_transient(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, conn.SimpleBuffer(names("sb")) as buffer:
        buffer.put("fleeting")
        message = buffer.get(timeout=5)
        assert message.payload == "fleeting"
        assert message.properties["delivery_mode"] == 1
