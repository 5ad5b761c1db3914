# Generated from src/kelp/testing/aio/test_queue_expiry.py by scripts/unasync.py; do not edit.
"""Queue expiry (``expires``, seconds): a queue unused that long is deleted, with its messages.

Checking that a queue exists (a passive declare) counts as using it on RabbitMQ, so the checks here are
spaced further apart than the expiry."""

from __future__ import annotations

import pytest

from kelp import Connection, Queue

from .helpers import Names, consuming, declared, drain_for, queue_exists, queue_gone

pytestmark = pytest.mark.kelp_needs("queue_expiry")


def test_unused_queue_expires(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"), expires=0.2)
        declared(conn, q)
        assert queue_exists(conn, q.name)
        assert queue_gone(conn, q.name, timeout=5.0, interval=0.5)


def test_messages_do_not_keep_a_queue_alive(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"), expires=0.2)
        declared(conn, q)
        conn.Producer().publish("forgotten", routing_key=q.name)
        assert queue_gone(conn, q.name, timeout=5.0, interval=0.5)


def test_queue_with_a_consumer_does_not_expire(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"), expires=0.2)
        with consuming(conn, [q]) as inbox:
            drain_for(conn, 0.5)
            assert queue_exists(conn, q.name)
            conn.Producer().publish("still here", routing_key=q.name)
            assert inbox.wait(conn, 1)
            assert inbox.bodies == ["still here"]
            inbox.messages[0].ack()
        # Unused again once the consumer is gone.
        assert queue_gone(conn, q.name, timeout=5.0, interval=0.5)
