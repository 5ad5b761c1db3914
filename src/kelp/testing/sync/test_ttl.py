# Generated from src/kelp/testing/aio/test_ttl.py by scripts/unasync.py; do not edit.
"""Message TTL: per-message ``expiration`` and per-queue ``message_ttl`` (both in seconds); an expired
message is never delivered. The lower of the two applies."""

from __future__ import annotations

import pytest

from kelp import Connection, Queue

from .helpers import Names, consuming, count_becomes, declared, drain_for, payloads, sleep, take_all

pytestmark = pytest.mark.kelp_needs("ttl")


def test_per_message_expiration_drops_only_that_message(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("keep-1", routing_key=bq.name)
        producer.publish("short", routing_key=bq.name, expiration=0.1)
        producer.publish("keep-2", routing_key=bq.name, expiration=30)
        sleep(0.35)
        assert take_all(bq) == ["keep-1", "keep-2"]


def test_message_taken_before_expiry_is_delivered(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("in time", routing_key=bq.name, expiration=10)
        assert payloads(bq, 1) == ["in time"]


def test_queue_message_ttl_expires_every_message(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), message_ttl=0.1))
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key=bq.name)
        sleep(0.35)
        assert bq.get() is None
        assert count_becomes(bq, 0, timeout=3.0)


def test_queue_ttl_does_not_expire_fresh_messages(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), message_ttl=0.3))
        producer = conn.Producer()
        producer.publish("old", routing_key=bq.name)
        sleep(0.45)
        producer.publish("new", routing_key=bq.name)
        assert take_all(bq) == ["new"]


def test_lower_of_queue_and_message_ttl_applies(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        long_queue = declared(conn, Queue(names("q"), message_ttl=30))
        short_queue = declared(conn, Queue(names("q"), message_ttl=0.1))
        producer = conn.Producer()
        producer.publish("short message", routing_key=long_queue.name, expiration=0.1)
        producer.publish("long message", routing_key=short_queue.name, expiration=30)
        sleep(0.35)
        assert take_all(long_queue) == []
        assert take_all(short_queue) == []


def test_expired_message_is_not_delivered_to_a_late_consumer(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        producer = conn.Producer()
        producer.publish("stale", routing_key=q.name, expiration=0.1)
        sleep(0.35)
        with consuming(conn, [q]) as inbox:
            drain_for(conn)
            assert inbox.bodies == []
            producer.publish("fresh", routing_key=q.name, expiration=10)
            assert inbox.wait(conn, 1)
            assert inbox.bodies == ["fresh"]
