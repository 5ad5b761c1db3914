"""Publishes on redis:// are pipelined: a persistent message's script call is written to the socket
before publish() returns and its reply is read later (the outbox); transient ones may wait a millisecond
in a buffer. Refusals found in later replies are raised by the next publish, flush or close."""

from __future__ import annotations

import asyncio
import time

import pytest
from kelp_redis_kit import with_options

import kelp.aio
from kelp import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked, NotFound, UsageError

BOUND = 0.5  # seconds: the linger is a millisecond; this leaves room for a loaded test machine
FULL = {"x-overflow": "reject-publish"}
TRANSIENT = Exchange("", delivery_mode=1)  # the default exchange, publishing transient messages


def _count(conn: Connection, name: str) -> int:
    return Queue(name)(conn.default_channel).queue_declare(passive=True).message_count


def _becomes(conn: Connection, name: str, expected: int, bound: float = BOUND) -> float:
    """Seconds until the queue holds ``expected`` messages, seen from ``conn``; fails after ``bound``."""
    start = time.monotonic()
    while (count := _count(conn, name)) != expected:
        assert time.monotonic() - start < bound, f"{count} of {expected} messages after {bound}s"
        time.sleep(0.001)
    return time.monotonic() - start


def test_a_persistent_publish_is_written_not_buffered_and_its_reply_read_later(redis_url):
    with Connection(redis_url) as publisher, Connection(redis_url) as reader:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("first", routing_key="jobs")
        publisher.flush()
        transport = publisher.transport
        producer.publish("written", routing_key="jobs")
        assert not transport._buffer  # type: ignore[union-attr]
        assert [e.body for e in transport.unconfirmed()] == [b"written"]  # reply not read yet
        _becomes(reader, "jobs", 2)  # the publisher does nothing more: Redis already has it
        publisher.flush()
        assert transport.unconfirmed() == []


def test_transient_publishes_are_buffered_and_reach_another_connection_within_the_linger(redis_url):
    with Connection(redis_url) as publisher, Connection(redis_url) as reader:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=TRANSIENT)
        producer.publish("first", routing_key="jobs")
        publisher.flush()
        transport = publisher.transport
        producer.publish("buffered", routing_key="jobs")
        assert transport._buffer, "a transient publish should wait in the buffer"  # type: ignore[union-attr]
        assert len(transport.unconfirmed()) == 1  # owed a confirm all the same
        _becomes(reader, "jobs", 2)  # the linger timer writes it


def test_a_full_transient_batch_is_written_by_the_publisher_at_once(redis_url):
    from kelp.transport.redis import PUBLISH_BATCH

    with Connection(redis_url) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=TRANSIENT)
        for n in range(PUBLISH_BATCH + 1):
            producer.publish(n, routing_key="jobs")
        assert len(publisher.transport._buffer) < PUBLISH_BATCH  # type: ignore[union-attr]


def test_the_publisher_reads_its_own_writes(redis_url):
    with Connection(redis_url) as conn:
        bound = Queue("jobs")(conn.default_channel)
        bound.declare()
        producer = conn.Producer()
        for n in range(10):
            producer.publish(n, routing_key="jobs", delivery_mode=1 + n % 2)
        assert bound.queue_declare(passive=True).message_count == 10  # written before the declare
        assert [bound.get().payload for _ in range(10)] == list(range(10))


def test_a_clean_close_confirms_what_is_owed(redis_url):
    with Connection(redis_url) as reader:
        with Connection(redis_url) as publisher:
            Queue("jobs")(publisher.default_channel).declare()
            producer = publisher.Producer()
            for n in range(100):
                producer.publish(n, routing_key="jobs", delivery_mode=1 + n % 2)
        assert _count(reader, "jobs") == 100  # no waiting: close returned after the replies


def _fill_from_elsewhere(redis_url: str) -> None:
    """Another connection declares a reject-publish queue and fills it."""
    with Connection(redis_url) as other:
        Queue("full", queue_arguments={**FULL, "x-max-length": 1})(other.default_channel).declare()
        other.Producer().publish("first", routing_key="full")


def test_a_refusal_in_the_middle_of_a_pipelined_stream_is_raised_naming_it(redis_url):
    with Connection(redis_url) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        _fill_from_elsewhere(redis_url)
        producer = publisher.Producer()
        producer.publish("learn", routing_key="jobs")
        for n in range(50):
            producer.publish(n, routing_key="full" if n == 25 else "jobs")
        with pytest.raises(MessageNacked) as raised:
            publisher.flush()
        assert [e.body for e in raised.value.envelopes] == [b"25"]
        assert "full" in str(raised.value)
        publisher.flush()  # reported once
        assert _count(publisher, "jobs") == 50  # the others are stored
        assert _count(publisher, "full") == 1


def test_a_refusal_is_raised_by_the_next_publish_when_nobody_flushes(redis_url):
    with Connection(redis_url) as publisher:
        _fill_from_elsewhere(redis_url)
        producer = publisher.Producer()
        producer.publish("refused", routing_key="full")  # written; its reply is read later
        Queue("jobs")(publisher.default_channel).declare()  # reads the replies before its own
        with pytest.raises(MessageNacked) as raised:
            producer.publish("next", routing_key="jobs")
        assert [e.body for e in raised.value.envelopes] == [b"refused"]
        assert _count(publisher, "jobs") == 0  # the publish that raised wrote nothing


def test_a_refusal_is_raised_by_close(redis_url):
    _fill_from_elsewhere(redis_url)
    publisher = Connection(redis_url)
    publisher.connect()
    publisher.Producer().publish("refused", routing_key="full")
    with pytest.raises(MessageNacked) as raised:
        publisher.close()
    assert [e.body for e in raised.value.envelopes] == [b"refused"]
    assert not publisher.connected


def test_confirm_publish_waits_and_raises(redis_url):
    with Connection(with_options(redis_url, confirm_publish="true")) as publisher:
        assert publisher.transport.info()["confirm_publish"] is True  # type: ignore[union-attr]
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("learn", routing_key="jobs")
        assert publisher.transport.unconfirmed() == []  # type: ignore[union-attr]
        _fill_from_elsewhere(redis_url)
        with pytest.raises(MessageNacked) as raised:
            producer.publish("refused", routing_key="full")
        assert [e.body for e in raised.value.envelopes] == [b"refused"]


def test_confirm_publish_as_a_transport_option(redis_url):
    with Connection(redis_url, transport_options={"confirm_publish": True}) as publisher:
        assert publisher.transport.confirm_publish  # type: ignore[union-attr]


def test_an_exchange_deleted_elsewhere_is_reported_then_raises_not_found(redis_url):
    logs = Exchange("logs", "fanout")
    with Connection(redis_url) as publisher, Connection(redis_url) as other:
        Queue("sink", logs)(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=logs)
        producer.publish("learn")  # the exchange is known to exist now
        Exchange("logs")(other.default_channel).delete()
        producer.publish("dropped")  # pipelined: the exchange was seen
        with pytest.raises(MessageNacked) as raised:
            publisher.flush()
        assert "no exchange ['logs']" in str(raised.value)
        assert [e.body for e in raised.value.envelopes] == [b"dropped"]
        with pytest.raises(NotFound):
            producer.publish("raises")  # forgotten: the next publish waits for the answer


def test_an_unseen_exchange_raises_at_once(redis_url):
    with Connection(redis_url) as publisher:
        publisher.Producer().publish("learn", routing_key="nowhere")
        with pytest.raises(NotFound):
            publisher.Producer().publish("x", exchange="never-declared", routing_key="k")


def test_the_outbox_is_bounded_by_count_and_bytes(redis_url):
    with Connection(with_options(redis_url, max_unconfirmed=5)) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        for n in range(100):
            producer.publish(n, routing_key="jobs")
            assert len(publisher.transport.unconfirmed()) <= 5  # type: ignore[union-attr]
    body = "x" * 1000
    options = {"max_unconfirmed_bytes": 3000}
    with Connection(redis_url, transport_options=options) as publisher:
        producer = publisher.Producer()
        for _ in range(20):
            producer.publish(body, routing_key="jobs")
            assert len(publisher.transport.unconfirmed()) <= 3  # type: ignore[union-attr]
        assert _count(publisher, "jobs") == 120


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_outbox_bounds_are_refused(redis_url, value):
    with pytest.raises(UsageError, match="max_unconfirmed"):
        Connection(with_options(redis_url, max_unconfirmed=value)).connect()


async def test_async_transient_publishes_reach_another_connection_within_the_linger(redis_url):
    async with kelp.aio.Connection(redis_url) as publisher, kelp.aio.Connection(redis_url) as reader:
        await kelp.aio.Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=kelp.aio.Exchange("", delivery_mode=1))
        await producer.publish("learn", routing_key="jobs")
        await producer.publish("buffered", routing_key="jobs")
        assert publisher.transport._buffer  # type: ignore[union-attr]
        start = time.monotonic()
        bound = kelp.aio.Queue("jobs")(reader.default_channel)
        while (await bound.queue_declare(passive=True)).message_count != 2:
            assert time.monotonic() - start < BOUND
            await asyncio.sleep(0.001)


async def test_async_concurrent_publishes_share_the_pipeline(redis_url):
    async with kelp.aio.Connection(redis_url) as publisher:
        await kelp.aio.Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        await producer.publish("learn", routing_key="jobs")
        wire = publisher.transport._pipe.wire  # type: ignore[union-attr]
        reads = 0
        read = wire.read

        async def counting_read(*args, **kwargs):
            nonlocal reads
            reads += 1
            return await read(*args, **kwargs)

        wire.read = counting_read
        await asyncio.gather(*(producer.publish(n, routing_key="jobs") for n in range(500)))
        assert reads < 10, f"{reads} replies read for 500 publishes: they should share the pipeline"
        await publisher.flush()
        assert publisher.transport.unconfirmed() == []  # type: ignore[union-attr]
        assert (
            await kelp.aio.Queue("jobs")(publisher.default_channel).queue_declare(passive=True)
        ).message_count == 501


async def test_async_clean_close_confirms_what_is_owed(redis_url):
    async with kelp.aio.Connection(redis_url) as publisher:
        await kelp.aio.Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        for n in range(100):
            await producer.publish(n, routing_key="jobs")
    with Connection(redis_url) as reader:
        assert _count(reader, "jobs") == 100


def test_pipelined_publishes_survive_the_script_being_flushed(redis_url):
    import redis

    with Connection(redis_url) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        admin = redis.Redis.from_url(redis_url.split("?")[0])
        try:
            for n in range(200):
                if n == 100:
                    admin.execute_command("FUNCTION", "FLUSH")
                    admin.execute_command("SCRIPT", "FLUSH")
                producer.publish(n, routing_key="jobs")
            publisher.flush()
        finally:
            admin.close()
        assert _count(publisher, "jobs") == 200
