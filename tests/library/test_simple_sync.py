"""SimpleQueue / SimpleBuffer, sync face."""

from __future__ import annotations

import time

import pytest

from kelp import Connection, Queue
from kelp.exceptions import NotFound, ResourceLocked
from kelp.simple import Empty, SimpleBuffer, SimpleQueue


def test_put_get_ack(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        q.put({"n": 1}, headers={"h": "v"}, correlation_id="c1")
        message = q.get(timeout=5)
        assert message.payload == {"n": 1}
        assert message.headers["h"] == "v"
        assert message.properties["correlation_id"] == "c1"
        assert message.delivery_info["routing_key"] == name
        assert message.delivery_info["exchange"] == name
        message.ack()
        assert q.qsize() == 0


def test_layout_is_direct_exchange_named_like_the_queue(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        assert q.queue.name == name
        assert q.queue.exchange is not None
        assert (q.queue.exchange.name, q.queue.exchange.type) == (name, "direct")
        assert q.queue.routing_key == name
        assert q.producer.routing_key == name
        assert q.consumer.queues == [q.queue]


def test_qsize_len_and_clear(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        assert q.qsize() == 0
        assert len(q) == 0
        assert bool(q) is True  # never falsy, even when empty
        for n in range(4):
            q.put(n)
        assert q.qsize() == 4
        assert len(q) == 4
        assert q.clear() == 4
        assert len(q) == 0


def test_get_times_out_with_empty(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        assert SimpleQueue.Empty is Empty
        started = time.monotonic()
        with pytest.raises(q.Empty):
            q.get(timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 2


def test_get_nowait_and_nonblocking_get(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        with pytest.raises(Empty):
            q.get_nowait()
        with pytest.raises(Empty):
            q.get(block=False)
        q.put("a")
        q.put("b")
        first = q.get_nowait()
        second = q.get(block=False)
        assert [first.payload, second.payload] == ["a", "b"]
        first.ack()
        second.ack()


def test_message_arriving_between_gets_is_kept_for_the_next(url, name):
    with Connection(url) as conn, SimpleQueue(conn, name) as q:
        for n in range(3):
            q.put(n)
        first = q.get(timeout=5)
        # One drain moved every ready message here; the rest wait in the buffer, not in the queue.
        assert first.payload == 0
        assert len(q.buffer) == 2
        rest = [q.get(timeout=0), q.get(timeout=0)]
        assert [m.payload for m in rest] == [1, 2]
        for message in (first, *rest):
            message.ack()
        with pytest.raises(Empty):
            q.get(timeout=0.05)


def test_close_requeues_buffered_messages(url, name):
    with Connection(url) as conn:
        q = SimpleQueue(conn, name)
        for n in range(3):
            q.put(n)
        taken = q.get(timeout=5)
        assert taken.payload == 0
        assert q.qsize() == 0  # all three were delivered to us
        q.close()
        assert q.buffer == type(q.buffer)()
        assert q.qsize() == 2  # the two never returned by get are back
        with Connection(url) as other, SimpleQueue(other, name) as q2:
            again = [q2.get(timeout=5) for _ in range(2)]
            assert [m.payload for m in again] == [1, 2]
            assert all(m.redelivered for m in again)
            for m in again:
                m.ack()
        taken.ack()


def test_unacked_get_comes_back_when_the_connection_closes(url, name):
    with Connection(url) as first, SimpleQueue(first, name) as q:
        q.put("retry me")
        assert q.get(timeout=5).payload == "retry me"
    with Connection(url) as second, SimpleQueue(second, name) as q:
        message = q.get(timeout=5)
        assert (message.payload, message.redelivered) == ("retry me", True)
        message.ack()


def test_queue_entity_on_default_exchange(url, name):
    with Connection(url) as conn, SimpleQueue(conn, Queue(name)) as q:
        q.put("via default exchange")
        message = q.get(timeout=5)
        assert message.delivery_info["exchange"] == ""
        assert message.payload == "via default exchange"
        message.ack()


def test_connection_factory_and_channel_argument(url, name):
    with Connection(url) as conn:
        channel = conn.channel()
        with conn.SimpleQueue(name, channel=channel) as q:
            assert q.channel is channel
            q.put("x", serializer="json", compression="zlib")
            message = q.get(timeout=5)
            assert message.payload == "x"
            message.ack()


def test_simple_buffer_is_transient(url, name):
    with Connection(url) as conn:
        buffer = SimpleBuffer(conn, name)
        assert (buffer.queue.durable, buffer.queue.auto_delete, buffer.queue.exclusive) == (False, True, True)
        assert buffer.no_ack is True
        buffer.put("fleeting")
        message = buffer.get(timeout=5)
        assert message.payload == "fleeting"
        assert message.properties["delivery_mode"] == 1
        assert message.acknowledged  # no_ack: nothing to settle
        with Connection(url) as other, pytest.raises(ResourceLocked):  # exclusive to conn
            other.channel().queue_declare(name, passive=True)
        buffer.close()
        # auto_delete: the queue went away with its only consumer.
        with pytest.raises(NotFound):
            conn.channel().queue_declare(name, passive=True)
