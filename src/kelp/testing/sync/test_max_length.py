# Generated from src/kelp/testing/aio/test_max_length.py by scripts/unasync.py; do not edit.
"""Queue length limits: ``max_length`` / ``max_length_bytes`` drop the oldest messages by default
(drop-head); with ``x-overflow: reject-publish`` the new message is refused instead."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked
from kelp.testing import Capabilities

from .helpers import Names, count_becomes, declared, payloads, take_all

pytestmark = pytest.mark.kelp_needs("max_length", "fanout")

REJECT_PUBLISH = {"x-overflow": "reject-publish"}


def _publish_refused(producer: Any, capabilities: Capabilities, body: Any, **kwargs: Any) -> None:
    """Publish a message a full queue refuses. Where routing happens inside publish and confirms are not
    pipelined, publish must raise MessageNacked; elsewhere the refusal may come later, at the latest
    from flush, naming the message."""
    if capabilities.refusal_raises:
        with pytest.raises(MessageNacked):
            producer.publish(body, **kwargs)
    else:
        with pytest.raises(MessageNacked) as raised:
            _publish_and_flush(producer, body, **kwargs)
        assert [envelope.body for envelope in raised.value.envelopes] == [
            producer.prepare(body, **kwargs).body
        ]


def _publish_and_flush(producer: Any, body: Any, **kwargs: Any) -> None:
    producer.publish(body, **kwargs)
    producer.flush()


def test_max_length_drops_the_oldest(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_length=2))
        producer = conn.Producer()
        for n in range(1, 6):
            producer.publish(n, routing_key=bq.name)
        assert take_all(bq) == [4, 5]


def test_max_length_bytes_drops_the_oldest(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_length_bytes=10))
        producer = conn.Producer()
        for body in (b"aaaa", b"bbbb", b"cccc"):
            producer.publish(
                body, routing_key=bq.name, content_type="application/data", content_encoding="binary"
            )
        bodies = []
        while (message := bq.get()) is not None:
            bodies.append(message.body)
            message.ack()
        assert bodies == [b"bbbb", b"cccc"]


def test_reject_publish_refuses_the_newest(broker_url: str, names: Names, capabilities: Capabilities) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_length=2, queue_arguments=REJECT_PUBLISH))
        producer = conn.Producer()
        producer.publish(1, routing_key=bq.name)
        producer.publish(2, routing_key=bq.name)
        _publish_refused(producer, capabilities, 3, routing_key=bq.name)
        assert count_becomes(bq, 2)
        assert payloads(bq, 1) == [1]
        # Room again: the next publish is taken.
        producer.publish(4, routing_key=bq.name)
        assert take_all(bq) == [2, 4]


def test_reject_publish_still_delivers_to_queues_with_room(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "fanout")
        full = declared(conn, Queue(names("q"), ex, max_length=1, queue_arguments=REJECT_PUBLISH))
        roomy = declared(conn, Queue(names("q"), ex))
        producer = conn.Producer()
        producer.publish("first", exchange=ex)
        _publish_refused(producer, capabilities, "second", exchange=ex)
        assert take_all(full) == ["first"]
        assert payloads(roomy, 2) == ["first", "second"]
