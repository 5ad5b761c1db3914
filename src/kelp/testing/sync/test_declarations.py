# Generated from src/kelp/testing/aio/test_declarations.py by scripts/unasync.py; do not edit.
"""Declaring, inspecting and deleting exchanges and queues, and the errors the broker answers with.

An operation the broker refuses closes its channel on AMQP, so each one here runs on a fresh channel."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Consumer, Exchange, Queue
from kelp.exceptions import NotFound, PreconditionFailed, ResourceLocked

from .helpers import (
    Names,
    consuming,
    count_becomes,
    declared,
    fetch,
    message_count,
    payloads,
    queue_exists,
    queue_gone,
)

pytestmark = pytest.mark.kelp_needs("fanout", "topic")


def test_passive_declare_of_missing_queue_raises_not_found(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        with pytest.raises(NotFound):
            Queue(names("missing"))(channel).queue_declare(passive=True)


def test_passive_declare_of_missing_exchange_raises_not_found(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        with pytest.raises(NotFound):
            Exchange(names("missing"), "direct")(channel).declare(passive=True)


def test_passive_declare_of_existing_entities_succeeds(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        q = Queue(names("q"), ex, routing_key="#")
        declared(conn, q)
        channel = conn.channel()
        Exchange(ex.name, "topic")(channel).declare(passive=True)
        result = Queue(q.name)(channel).queue_declare(passive=True)
        assert result.queue == q.name
        assert result.message_count == 0
        assert result.consumer_count == 0


def test_queue_declare_reports_message_and_consumer_counts(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        busy = Queue(names("q"))
        declared(conn, busy)
        backlog = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key=backlog.name)
        assert count_becomes(backlog, 3)
        with consuming(conn, [busy]):
            result = Queue(busy.name)(conn.default_channel).queue_declare(passive=True)
            assert result.consumer_count == 1
            assert result.message_count == 0


def test_identical_redeclare_is_a_no_op(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), ex, routing_key="k", max_length=10, message_ttl=60)
        bq = declared(conn, q)
        conn.Producer().publish("kept", exchange=ex, routing_key="k")
        assert q(conn.default_channel).declare() == q.name
        Exchange(ex.name, "direct")(conn.default_channel).declare()
        assert payloads(bq, 1) == ["kept"]


INEQUIVALENT_QUEUES = [
    ({"max_length": 5}, {"max_length": 6}),
    ({"message_ttl": 1}, {"message_ttl": 2}),
    ({"durable": True}, {"durable": False}),
    ({}, {"max_priority": 4}),
]


@pytest.mark.parametrize(("first", "second"), INEQUIVALENT_QUEUES)
def test_redeclare_queue_with_other_arguments_fails(
    broker_url: str, names: Names, first: Any, second: Any
) -> None:
    with Connection(broker_url) as conn:
        name = names("q")
        declared(conn, Queue(name, **first))
        channel = conn.channel()
        with pytest.raises(PreconditionFailed):
            Queue(name, **second)(channel).declare()


@pytest.mark.parametrize(
    ("first", "second"),
    [({"type": "direct"}, {"type": "fanout"}), ({"type": "topic"}, {"type": "topic", "durable": False})],
)
def test_redeclare_exchange_with_other_type_or_flags_fails(
    broker_url: str, names: Names, first: Any, second: Any
) -> None:
    with Connection(broker_url) as conn:
        name = names("ex")
        declared(conn, Exchange(name, **first))
        channel = conn.channel()
        with pytest.raises(PreconditionFailed):
            Exchange(name, **second)(channel).declare()


def test_server_named_queue_gets_a_unique_generated_name(broker_url: str) -> None:
    with Connection(broker_url) as conn:
        first = Queue("", exclusive=True)(conn.default_channel)
        second = Queue("", exclusive=True)(conn.default_channel)
        name = first.declare()
        assert name
        assert first.name == name
        second.declare()
        assert second.name
        assert second.name != name
        conn.Producer().publish("to generated", routing_key=name)
        assert payloads(first, 1) == ["to generated"]


def test_exclusive_queue_is_locked_to_its_connection(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as owner:
        q = Queue(names("q"), exclusive=True)
        declared(owner, q)
        with Connection(broker_url) as other:
            with pytest.raises(ResourceLocked):
                Queue(q.name, exclusive=True)(other.channel()).declare()
            with pytest.raises(ResourceLocked):
                Queue(q.name)(other.channel()).get()
            consumer = Consumer(other.channel(), [Queue(q.name)], auto_declare=False)
            with pytest.raises(ResourceLocked):
                consumer.consume()


def test_exclusive_queue_is_deleted_with_its_connection(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as observer:
        name = names("q")
        with Connection(broker_url) as owner:
            declared(owner, Queue(name, exclusive=True))
            assert queue_exists(observer, name)
        assert queue_gone(observer, name)


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"), auto_delete=True)
        declared(conn, q)
        assert queue_exists(conn, q.name)  # no consumer yet: not deleted
        first = conn.Consumer([q])
        second = conn.Consumer([q])
        first.consume()
        second.consume()
        first.cancel()
        assert queue_exists(conn, q.name)
        second.cancel()
        assert queue_gone(conn, q.name)


def test_delete_if_unused_refuses_while_consumed(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        with consuming(conn, [q]):
            with pytest.raises(PreconditionFailed):
                Queue(q.name)(conn.channel()).delete(if_unused=True)
            assert queue_exists(conn, q.name)
        Queue(q.name)(conn.channel()).delete(if_unused=True)
        assert queue_gone(conn, q.name)


def test_delete_if_empty_refuses_while_messages_remain(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("still here", routing_key=bq.name)
        with pytest.raises(PreconditionFailed):
            Queue(bq.name)(conn.channel()).delete(if_empty=True)
        assert payloads(Queue(bq.name)(conn.channel()), 1) == ["still here"]
        Queue(bq.name)(conn.channel()).delete(if_empty=True)
        assert queue_gone(conn, bq.name)


def test_delete_removes_queue_and_messages(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        bq = declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        producer.publish("gone with the queue", exchange=ex)
        bq.delete()
        assert queue_gone(conn, bq.name)
        # Redeclared, it is a new empty queue, and its old binding went with the old one.
        fresh = declared(conn, Queue(bq.name))
        producer.publish("unrouted", exchange=ex)
        assert message_count(fresh) == 0
        assert fresh.get() is None


def test_delete_exchange(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = declared(conn, Exchange(names("ex"), "direct"))
        ex.delete()
        channel = conn.channel()
        with pytest.raises(NotFound):
            Exchange(ex.name, "direct")(channel).declare(passive=True)


def test_purge_returns_the_number_of_messages_removed(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key=bq.name)
        assert bq.purge() == 3
        assert bq.get() is None
        assert bq.purge() == 0
        producer.publish("after purge", routing_key=bq.name)
        assert payloads(bq, 1) == ["after purge"]


def test_purge_leaves_unacked_messages_alone(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key=bq.name)
        with Connection(broker_url) as taker:
            [held] = fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            assert held.payload == 0
            assert bq.purge() == 2
        # The unacked one was released when the taker closed.
        [back] = fetch(bq, 1)
        assert back.payload == 0
        assert back.redelivered is True


def test_binding_to_a_missing_exchange_raises_not_found(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        channel = conn.channel()
        with pytest.raises(NotFound):
            Queue(bq.name)(channel).bind_to(Exchange(names("missing"), "direct"), routing_key="k")


def test_consuming_a_missing_queue_raises_not_found(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        consumer = Consumer(channel, [Queue(names("missing"))], auto_declare=False)
        with pytest.raises(NotFound):
            consumer.consume()
