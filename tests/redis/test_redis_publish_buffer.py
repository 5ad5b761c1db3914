"""Unconfirmed publishes on redis:// are buffered per connection and pipelined (group commit); confirmed,
mandatory and possibly refused ones wait for the script. What each side of that line guarantees."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from kelp_redis_kit import with_options

import kelp.aio
from kelp import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked, NotFound

BOUND = 0.5  # seconds: the linger is a millisecond; this leaves room for a loaded test machine
FULL = {"x-overflow": "reject-publish"}


def _count(conn: Connection, name: str) -> int:
    return Queue(name)(conn.default_channel).queue_declare(passive=True).message_count


def _becomes(conn: Connection, name: str, expected: int, bound: float = BOUND) -> float:
    """Seconds until the queue holds ``expected`` messages, seen from ``conn``; fails after ``bound``."""
    start = time.monotonic()
    while (count := _count(conn, name)) != expected:
        assert time.monotonic() - start < bound, f"{count} of {expected} messages after {bound}s"
        time.sleep(0.001)
    return time.monotonic() - start


def test_plain_publishes_are_buffered_and_reach_another_connection_within_the_linger(redis_url):
    with Connection(redis_url) as publisher, Connection(redis_url) as reader:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("learn", routing_key="jobs")  # the first one answers: no queue refuses
        transport = publisher.transport
        producer.publish("buffered", routing_key="jobs")
        assert transport._buffer, "a plain publish should wait in the buffer"  # type: ignore[union-attr]
        _becomes(reader, "jobs", 2)  # the publisher does nothing more: the linger timer sends it


def test_a_full_batch_is_sent_by_the_publisher_at_once(redis_url):
    from kelp.transport.redis import PUBLISH_BATCH

    with Connection(redis_url) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        for n in range(PUBLISH_BATCH + 1):
            producer.publish(n, routing_key="jobs")
        assert len(publisher.transport._buffer) < PUBLISH_BATCH * 9  # type: ignore[union-attr]


def test_the_publisher_reads_its_own_writes(redis_url):
    with Connection(redis_url) as conn:
        bound = Queue("jobs")(conn.default_channel)
        bound.declare()
        producer = conn.Producer()
        for n in range(10):
            producer.publish(n, routing_key="jobs")
        assert bound.queue_declare(passive=True).message_count == 10  # flushed before the declare
        assert [bound.get().payload for _ in range(10)] == list(range(10))


def test_a_clean_close_sends_what_is_buffered(redis_url):
    with Connection(redis_url) as reader:
        with Connection(redis_url) as publisher:
            Queue("jobs")(publisher.default_channel).declare()
            producer = publisher.Producer()
            for n in range(100):
                producer.publish(n, routing_key="jobs")
        assert _count(reader, "jobs") == 100  # no waiting: close returned after sending


def _fill_from_elsewhere(redis_url: str) -> None:
    """Another connection declares a reject-publish queue and fills it."""
    with Connection(redis_url) as other:
        Queue("full", queue_arguments={**FULL, "x-max-length": 1})(other.default_channel).declare()
        other.Producer().publish("first", routing_key="full")


def test_a_refused_unconfirmed_publish_is_logged_not_raised(redis_url, caplog):
    with Connection(redis_url) as publisher:
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("learn", routing_key="jobs")  # no queue refuses yet: publishes are buffered
        _fill_from_elsewhere(redis_url)
        with caplog.at_level(logging.WARNING, logger="kelp.transport.redis"):
            producer.publish("refused", routing_key="full")  # buffered: nobody waits for the answer
            publisher.transport.flush()  # type: ignore[union-attr]
        assert "refused a buffered message" in caplog.text
        # The flush told the publisher a queue may refuse: from now on publishes wait for the answer.
        with pytest.raises(MessageNacked):
            producer.publish("refused too", routing_key="full")
        assert _count(publisher, "full") == 1


def test_confirm_publish_still_raises(redis_url):
    with Connection(with_options(redis_url, confirm_publish="true")) as publisher:
        assert publisher.transport.info()["confirm_publish"] is True  # type: ignore[union-attr]
        Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("learn", routing_key="jobs")
        assert not publisher.transport._buffer  # type: ignore[union-attr]
        _fill_from_elsewhere(redis_url)
        with pytest.raises(MessageNacked):
            producer.publish("refused", routing_key="full")


def test_confirm_publish_as_a_transport_option(redis_url):
    with Connection(redis_url, transport_options={"confirm_publish": True}) as publisher:
        assert publisher.transport.confirm_publish  # type: ignore[union-attr]


def test_an_exchange_deleted_elsewhere_drops_buffered_publishes_then_raises(redis_url, caplog):
    logs = Exchange("logs", "fanout")
    with Connection(redis_url) as publisher, Connection(redis_url) as other:
        Queue("sink", logs)(publisher.default_channel).declare()
        producer = publisher.Producer(exchange=logs)
        producer.publish("learn")  # the exchange is known to exist now
        Exchange("logs")(other.default_channel).delete()
        with caplog.at_level(logging.WARNING, logger="kelp.transport.redis"):
            producer.publish("dropped")  # buffered: the exchange was seen
            publisher.transport.flush()  # type: ignore[union-attr]
        assert "no exchange 'logs'" in caplog.text
        with pytest.raises(NotFound):
            producer.publish("raises")  # forgotten: the next publish waits for the answer


def test_an_unseen_exchange_raises_at_once(redis_url):
    with Connection(redis_url) as publisher:
        publisher.Producer().publish("learn", routing_key="nowhere")
        with pytest.raises(NotFound):
            publisher.Producer().publish("x", exchange="never-declared", routing_key="k")


async def test_async_buffered_publishes_reach_another_connection_within_the_linger(redis_url):
    async with kelp.aio.Connection(redis_url) as publisher, kelp.aio.Connection(redis_url) as reader:
        await kelp.aio.Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        await producer.publish("learn", routing_key="jobs")
        await producer.publish("buffered", routing_key="jobs")
        assert publisher.transport._buffer  # type: ignore[union-attr]
        start = time.monotonic()
        bound = kelp.aio.Queue("jobs")(reader.default_channel)
        while (await bound.queue_declare(passive=True)).message_count != 2:
            assert time.monotonic() - start < BOUND
            await asyncio.sleep(0.001)


async def test_async_clean_close_sends_what_is_buffered(redis_url):
    async with kelp.aio.Connection(redis_url) as publisher:
        await kelp.aio.Queue("jobs")(publisher.default_channel).declare()
        producer = publisher.Producer()
        for n in range(100):
            await producer.publish(n, routing_key="jobs")
    with Connection(redis_url) as reader:
        assert _count(reader, "jobs") == 100
