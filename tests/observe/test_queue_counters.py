"""The per-queue traffic counters each broker kelp runs keeps (QueueStats published / delivered / acked):
exact, kept by the broker (a new connection reads them), on every transport of KELP_TEST_TRANSPORTS that
kelp brokers itself (RabbitMQ's come from its management API: see test_management)."""

from __future__ import annotations

import time
from typing import Any

import pytest

import kelp
from kelp.transport.base import QueueStats
from transport_urls import selected, url_for

#: The transports whose broker keeps these counters.
COUNTING = ("memory", "sqlite", "redis", "postgres")


@pytest.fixture(params=selected(COUNTING))
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    return url_for(request.param, tmp_path)


def stats(url: str) -> dict[str, QueueStats]:
    """The queue statistics as a new connection reads them from the broker."""
    with kelp.Connection(url) as connection:
        assert connection.transport is not None
        rows = connection.transport.queue_stats()
    out = {}
    for row in rows:
        assert isinstance(row, QueueStats)
        out[row.queue] = row
    return out


def counters(row: QueueStats) -> tuple[int | None, int | None, int | None]:
    return row.published, row.delivered, row.acked


def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_counters_move_with_traffic(url: str) -> None:
    exchange = kelp.Exchange("orders", "direct")
    work = kelp.Queue("work", exchange, "new", dead_letter_exchange="dlx")
    dead = kelp.Queue("dead", kelp.Exchange("dlx", "direct"), "new")
    with kelp.Connection(url) as connection:
        producer = connection.Producer(exchange=exchange)
        producer.publish({"n": 0}, routing_key="new", declare=[work, dead])
        assert counters(stats(url)["work"]) == (1, 0, 0)
        for n in range(1, 4):
            producer.publish({"n": n}, routing_key="new")
        channel = connection.default_channel
        first = channel.basic_get("work")
        assert first is not None
        first.ack()
        second = channel.basic_get("work")
        assert second is not None
        second.requeue()  # delivered again below: a redelivery counts
        again = channel.basic_get("work")
        assert again is not None
        assert again.redelivered
        again.ack()
        third = channel.basic_get("work")
        assert third is not None
        third.reject()  # dead-lettered: enters the dead queue
        taken = channel.basic_get("work", no_ack=True)
        assert taken is not None
    eventually(lambda: _expect(url, work=(4, 5, 2), dead=(1, 0, 0)))

    # Consumers (the claim path) count too, and acks made by another connection.
    with kelp.Connection(url) as connection:
        producer = connection.Producer(exchange=exchange)
        for n in range(6):
            producer.publish({"n": n}, routing_key="new")
        got: list[Any] = []
        with connection.Consumer(work, callbacks=[lambda body, message: got.append(message)]):
            while len(got) < 6:
                connection.drain_events(timeout=5)
            for message in got[:4]:
                message.ack()
            during = stats(url)["work"]
            assert during.delivered == 5 + 6
            # The 4 acks may still be buffered by this connection (sqlite, redis): counted once sent.
    eventually(lambda: _expect(url, work=(10, 11, 6), dead=(1, 0, 0)))
    final = stats(url)["work"]
    assert (final.ready, final.unacked) == (2, 0)  # the two unacked returned when the connection closed


def _expect(url: str, **queues: tuple[int, int, int]) -> None:
    found = stats(url)
    assert {name: counters(found[name]) for name in queues} == queues


def test_a_queue_declared_again_counts_from_zero(url: str) -> None:
    queue = kelp.Queue("again")
    with kelp.Connection(url) as connection:
        producer = connection.Producer()
        producer.publish("x", routing_key="again", declare=[queue])
        assert counters(stats(url)["again"]) == (1, 0, 0)
        bound = queue(connection.default_channel)
        bound.delete()
        bound.declare()
        assert counters(stats(url)["again"]) == (0, 0, 0)


def test_messages_taken_as_soon_as_published_count(url: str) -> None:
    # Buffered transient publishes stored by the same transaction that takes them (sqlite), then purged.
    queue = kelp.Queue("quick")
    with kelp.Connection(url) as connection:
        channel = connection.default_channel
        queue(channel).declare()
        producer = connection.Producer()
        producer.publish("a", routing_key="quick", delivery_mode=1)
        assert channel.basic_get("quick", no_ack=True) is not None
        producer.publish("b", routing_key="quick", delivery_mode=1)
        producer.publish("c", routing_key="quick", delivery_mode=1)
        assert queue(channel).purge() == 2
    assert counters(stats(url)["quick"]) == (3, 1, 0)


def test_a_delayed_message_counts_when_it_comes_due(url: str) -> None:
    queue = kelp.Queue("later")
    with kelp.Connection(url) as connection:
        queue(connection.default_channel).declare()
        connection.Producer().publish("soon", routing_key="later", countdown=0.3)
        held = stats(url)["later"]
        assert (held.delayed, held.published) == (1, 0)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = connection.default_channel.basic_get("later")
            time.sleep(0.05)
        assert message is not None
        message.ack()
    assert counters(stats(url)["later"]) == (1, 1, 1)
