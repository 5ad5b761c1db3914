# Generated from src/kelp/testing/aio/test_acks.py by scripts/unasync.py; do not edit.
"""Acknowledgements: a message leaves its queue only when acked; each message settles exactly once."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Queue
from kelp.exceptions import MessageStateError

from .helpers import Names, consuming, declared, drain_for, fetch, message_count, payloads


def test_ack_removes_the_message(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("done", routing_key=bq.name)
        with Connection(broker_url) as taker:
            [message] = fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            acknowledged = [message.acknowledged]
            message.ack()
            acknowledged.append(message.acknowledged)
            assert acknowledged == [False, True]
        # The taker is gone; an unacked message would be back in the queue now.
        assert bq.get() is None
        assert message_count(bq) == 0


def test_unacked_get_survives_its_connection_and_is_redelivered(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish({"id": 7}, routing_key=bq.name)
        with Connection(broker_url) as taker:
            [message] = fetch(Queue(bq.name)(taker.default_channel), 1, ack=False)
            assert message.redelivered is False
        # taker closed without acking: the message is back, flagged.
        [again] = fetch(bq, 1)
        assert again.payload == {"id": 7}
        assert again.redelivered is True
        assert again.delivery_info["redelivered"] is True
        assert bq.get() is None


def test_reject_with_requeue_redelivers_flagged(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        with consuming(conn, [q]) as inbox:
            conn.Producer().publish("again", routing_key=q.name)
            assert inbox.wait(conn, 1)
            first = inbox.messages[0]
            assert first.redelivered is False
            first.reject(requeue=True)
            assert inbox.wait(conn, 2)
            second = inbox.messages[1]
            assert inbox.bodies == ["again", "again"]
            assert second.redelivered is True
            assert second.delivery_tag != first.delivery_tag
            second.ack()
            drain_for(conn)
            assert len(inbox) == 2


def test_requeue_redelivers_flagged(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("back", routing_key=bq.name)
        [message] = fetch(bq, 1, ack=False)
        message.requeue()
        [again] = fetch(bq, 1)
        assert again.payload == "back"
        assert again.redelivered is True
        assert bq.get() is None


def test_reject_without_requeue_drops(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("bad", routing_key=bq.name)
        producer.publish("good", routing_key=bq.name)
        [bad] = fetch(bq, 1, ack=False)
        bad.reject(requeue=False)
        assert bad.acknowledged is True
        assert payloads(bq, 1) == ["good"]
        assert bq.get() is None
    with Connection(broker_url) as conn:
        assert Queue(bq.name)(conn.default_channel).get() is None


SETTLE = {
    "ack": lambda message: message.ack(),
    "reject": lambda message: message.reject(requeue=False),
    "requeue": lambda message: message.requeue(),
}


@pytest.mark.parametrize("first", sorted(SETTLE))
@pytest.mark.parametrize("second", sorted(SETTLE))
def test_message_settles_exactly_once(broker_url: str, names: Names, first: Any, second: Any) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("x", routing_key=bq.name)
        [message] = fetch(bq, 1, ack=False)
        SETTLE[first](message)
        assert message.acknowledged is True
        with pytest.raises(MessageStateError):
            SETTLE[second](message)


def test_acking_one_message_leaves_the_others(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in (1, 2, 3):
            producer.publish(n, routing_key=bq.name)
        with Connection(broker_url) as taker:
            messages = fetch(Queue(bq.name)(taker.default_channel), 3, ack=False)
            assert [m.payload for m in messages] == [1, 2, 3]
            assert len({m.delivery_tag for m in messages}) == 3
            messages[1].ack()
        again = fetch(bq, 2)
        assert sorted(m.payload for m in again) == [1, 3]
        assert all(m.redelivered for m in again)
        assert bq.get() is None


def test_no_ack_consumer_removes_messages_without_acks(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        declared(conn, q)
        producer = conn.Producer()
        with Connection(broker_url) as taker, consuming(taker, [q], no_ack=True) as inbox:
            for n in range(3):
                producer.publish(n, routing_key=q.name)
            assert inbox.wait(taker, 3)
            assert inbox.bodies == [0, 1, 2]
        # Nothing comes back: with no_ack the broker forgot them on delivery.
        assert Queue(q.name)(conn.default_channel).get() is None


def test_get_with_no_ack_removes_the_message(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("gone", routing_key=bq.name)
        with Connection(broker_url) as taker:
            [message] = fetch(Queue(bq.name)(taker.default_channel), 1, no_ack=True)
            assert message.payload == "gone"
        assert bq.get() is None
