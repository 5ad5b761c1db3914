# Generated from src/kelp/testing/aio/test_routing_fanout.py by scripts/unasync.py; do not edit.
"""Fanout exchanges: every bound queue gets a copy, whatever the routing key."""

from __future__ import annotations

import pytest

from kelp import Connection, Exchange, Queue

from .helpers import Names, count_becomes, declared, payloads

pytestmark = pytest.mark.kelp_needs("fanout")


def test_fanout_copies_to_every_bound_queue_ignoring_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        queues = [declared(conn, Queue(names("q"), ex, routing_key=key)) for key in ("", "x", "y")]
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange=ex, routing_key="anything")
        producer.publish({"n": 2}, exchange=ex)
        for bq in queues:
            assert payloads(bq, 2) == [{"n": 1}, {"n": 2}]
            assert bq.get() is None


def test_fanout_with_one_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        bq = declared(conn, Queue(names("q"), ex))
        conn.Producer().publish("solo", exchange=ex, routing_key="k")
        assert payloads(bq, 1) == ["solo"]
        assert bq.get() is None


def test_fanout_without_queues_drops_the_message(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        declared(conn, ex)
        producer = conn.Producer()
        producer.publish("nobody listens", exchange=ex)
        # A queue bound afterwards does not see what was dropped before it existed.
        bq = declared(conn, Queue(names("q"), ex))
        producer.publish("now someone does", exchange=ex)
        assert payloads(bq, 1) == ["now someone does"]
        assert bq.get() is None


def test_unbound_queue_stops_receiving_but_keeps_its_messages(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        stays = declared(conn, Queue(names("q"), ex))
        leaves = declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        producer.publish(1, exchange=ex)
        leaves.unbind_from(ex)
        producer.publish(2, exchange=ex)
        assert payloads(stays, 2) == [1, 2]
        assert count_becomes(leaves, 1)
        assert payloads(leaves, 1) == [1]
