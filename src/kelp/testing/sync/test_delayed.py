# Generated from src/kelp/testing/aio/test_delayed.py by scripts/unasync.py; do not edit.
"""Delayed delivery (``countdown`` / ``eta``): the broker holds the message, routed at publish, until its
due time; no consumer or ``get`` sees it earlier and it takes no prefetch slot; among due messages the
order is due time then publish order; TTL counts from the due time; ``cancel_delayed`` withdraws it.

Needs the ``delayed`` feature; ``cancel_delayed``, ``count_delayed`` and ``delayed_expiration`` where a
test uses them (a transport that cannot cancel must say so with UsageError). ``capabilities.delay_slack``
is how late a message may become ready, ``delay_step`` the gap between due times whose order is kept."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest

from kelp import Connection, Exchange, Queue
from kelp.exceptions import UsageError
from kelp.testing import Capabilities

from .helpers import Names, consuming, declared, fetch, sleep, take_all

pytestmark = pytest.mark.kelp_needs("delayed")


def _stats(conn: Connection, name: str) -> Any:
    for row in conn.transport.queue_stats():
        if row[0] == name:
            return row
    raise AssertionError(f"queue {name} not in queue_stats")


def test_a_delayed_message_is_invisible_until_due(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        started = time.time()
        conn.Producer().publish("later", routing_key=bq.name, countdown=1.0)
        while time.time() < started + 0.9:
            assert bq.get() is None, "delivered before its due time"
            sleep(0.05)
        got = fetch(bq, 1, timeout=1.0 + capabilities.delay_slack)
        assert [m.payload for m in got] == ["later"]
        assert time.time() >= started + 1.0


def test_a_consumer_never_sees_a_message_early(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        due: dict[int, float] = {}
        for n, delay in enumerate([0.6, 0.3, 0.9]):
            due[n] = time.time() + delay
            producer.publish(n, routing_key=bq.name, countdown=delay)
        arrived: dict[Any, float] = {}
        with consuming(conn, [bq]) as inbox:
            assert inbox.consumer is not None
            inbox.consumer.register_callback(lambda body, message: arrived.setdefault(body, time.time()))
            assert inbox.wait(conn, 3, timeout=1.0 + capabilities.delay_slack + 2)
            for message in inbox.messages:
                message.ack()
        for n, at in arrived.items():
            assert at >= due[n], f"message {n} arrived {due[n] - at:.3f} s early"
            assert at - due[n] <= capabilities.delay_slack + 1.0


def test_due_messages_go_by_due_time_then_publish_order(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    step = capabilities.delay_step
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("third", routing_key=bq.name, countdown=2 * step)
        producer.publish("first", routing_key=bq.name, countdown=step)
        producer.publish("second", routing_key=bq.name, countdown=step)
        producer.publish("now", routing_key=bq.name)
        sleep(2 * step + capabilities.delay_slack)
        assert take_all(bq) == ["now", "first", "second", "third"]


def test_a_past_due_time_means_now(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        conn.Producer().publish("past", routing_key=bq.name, eta=past)
        conn.Producer().publish("zero", routing_key=bq.name, countdown=0)
        assert [m.payload for m in fetch(bq, 2, timeout=2)] == ["past", "zero"]


def test_eta_delays_like_countdown(broker_url: str, names: Names, capabilities: Capabilities) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.6)
        conn.Producer().publish("at eta", routing_key=bq.name, eta=eta)
        assert bq.get() is None
        got = fetch(bq, 1, timeout=0.6 + capabilities.delay_slack + 1)
        assert [m.payload for m in got] == ["at eta"]
        assert datetime.datetime.now(datetime.UTC) >= eta


def test_a_delayed_message_takes_no_prefetch_slot(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        with consuming(conn, [bq], prefetch_count=1) as inbox:
            producer = conn.Producer()
            producer.publish("delayed", routing_key=bq.name, countdown=30)
            producer.publish("ready", routing_key=bq.name)
            assert inbox.wait(conn, 1, timeout=2)
            assert inbox.bodies == ["ready"]
            inbox.messages[0].ack()


def test_routing_happens_at_publish_through_an_exchange(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        exchange = Exchange(names("fan"), "fanout")
        one = declared(conn, Queue(names("q"), exchange))
        two = declared(conn, Queue(names("q"), exchange))
        conn.Producer(exchange=exchange).publish("both", countdown=0.3)
        assert one.get() is None
        for bq in (one, two):
            got = fetch(bq, 1, timeout=0.3 + capabilities.delay_slack + 1)
            assert [m.payload for m in got] == ["both"]


def test_ttl_counts_from_the_due_time(broker_url: str, names: Names, capabilities: Capabilities) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), message_ttl=1.0))
        conn.Producer().publish("kept", routing_key=bq.name, countdown=1.2)
        # Past 1.2 s the message would be long expired if its queue TTL had counted from the publish.
        got = fetch(bq, 1, timeout=1.2 + capabilities.delay_slack + 0.5)
        assert [m.payload for m in got] == ["kept"]


def test_per_message_expiration_counts_from_the_due_time(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        if not capabilities.supports("delayed_expiration"):
            with pytest.raises(UsageError, match="expiration"):
                producer.publish("x", routing_key=bq.name, countdown=0.5, expiration=1)
            return
        producer.publish("kept", routing_key=bq.name, countdown=0.6, expiration=1.0)
        producer.publish("dies", routing_key=bq.name, countdown=0.2, expiration=0.1)
        sleep(0.6 + capabilities.delay_slack)
        assert take_all(bq) == ["kept"]


def test_cancel_withdraws_a_delayed_message_from_every_queue(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        exchange = Exchange(names("fan"), "fanout")
        one = declared(conn, Queue(names("q"), exchange))
        two = declared(conn, Queue(names("q"), exchange))
        producer = conn.Producer(exchange=exchange)
        if not capabilities.supports("cancel_delayed"):
            message_id = producer.publish("x", countdown=0.2)
            assert message_id is not None
            with pytest.raises(UsageError, match="cannot cancel"):
                producer.cancel_delayed(message_id)
            return
        message_id = producer.publish("cancelled", countdown=0.5)
        kept_id = producer.publish("kept", countdown=0.5)
        assert message_id
        assert message_id != kept_id
        assert kept_id is not None
        assert producer.cancel_delayed(message_id) == 2
        assert producer.cancel_delayed(message_id) == 0  # already gone
        sleep(0.5 + capabilities.delay_slack)
        assert take_all(one) == ["kept"]
        assert take_all(two) == ["kept"]
        assert producer.cancel_delayed(kept_id) == 0  # delivered: no longer held


@pytest.mark.kelp_needs("cancel_delayed")
def test_cancel_of_an_unknown_id_is_zero(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        assert conn.Producer().cancel_delayed("no-such-message") == 0


@pytest.mark.kelp_needs("count_delayed")
def test_queue_stats_count_delayed_messages(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key=bq.name, countdown=30)
        producer.publish("ready", routing_key=bq.name)
        stats = _stats(conn, bq.name)
        assert tuple(stats) == (bq.name, 1, 0, 0)
        assert stats.delayed == 3
        bq.purge()  # purge drops ready messages only, as RabbitMQ's delayed exchange holds its own
        assert (_stats(conn, bq.name)).delayed == 3


def test_deleting_the_queue_drops_its_delayed_messages(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        name = names("q")
        bq = declared(conn, Queue(name))
        conn.Producer().publish("gone", routing_key=name, countdown=0.3)
        bq.delete()
        bq = declared(conn, Queue(name))
        sleep(0.3 + capabilities.delay_slack)
        assert take_all(bq) == []


def test_bad_countdown_publishes_nothing(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        bad: Any
        for bad in (-1, "10"):
            with pytest.raises(UsageError):
                conn.Producer().publish("x", routing_key=bq.name, countdown=bad)
        with pytest.raises(UsageError):
            conn.Producer().publish("x", routing_key=bq.name, eta=datetime.datetime.now())
        sleep(0.1)
        assert bq.get() is None


def test_publish_many_holds_prepared_delayed_envelopes(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        envelopes = [
            producer.prepare("late", routing_key=bq.name, countdown=0.4),
            producer.prepare("early", routing_key=bq.name),
        ]
        producer.publish_many(envelopes)
        assert [m.payload for m in fetch(bq, 1, timeout=1)] == ["early"]
        assert bq.get() is None
        got = fetch(bq, 1, timeout=0.4 + capabilities.delay_slack + 1)
        assert [m.payload for m in got] == ["late"]
