"""Publisher confirms, negative confirms and mandatory returns on amqp:// (sync face)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import kelp
from kelp._envelope import Envelope
from kelp.exceptions import MessageNacked


def envelopes(queue: str, n: int, mandatory: bool = False, exchange: str = "") -> list[Envelope]:
    return [
        Envelope(b"m%d" % i, {"delivery_mode": 2}, {"i": i}, exchange, queue, mandatory) for i in range(n)
    ]


def count_becomes(ch: kelp.Channel, queue: str, n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = ch.queue_declare(queue, passive=True).message_count
        if count == n or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_a_batch_of_many_confirms_is_settled_at_once(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        assert conn.transport is not None
        assert conn.transport.info()["confirm_publish"] is True
        assert ch.publish_batch(envelopes(queue, 5000)) == []
        assert ch.publish_batch(envelopes(queue, 1)) == []
        assert count_becomes(ch, queue, 5001) == 5001


def test_reject_publish_overflow_raises_message_nacked(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        assert ch.publish_batch(envelopes(queue, 2)) == []
        with pytest.raises(MessageNacked, match="refused 3 of 3"):
            ch.publish_batch(envelopes(queue, 3))
        # a nack does not close the channel
        assert ch.queue_declare(queue, passive=True).message_count == 2


def test_producer_publish_waits_for_the_confirm(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = kelp.Queue(names("q"), durable=True, auto_delete=False)
    with kelp.Connection(amqp_url) as conn:
        producer = conn.Producer()
        for i in range(50):
            producer.publish({"n": i}, routing_key=queue.name, declare=[queue])
        message = conn.default_channel.basic_get(queue.name)
        assert message is not None
        assert message.decode() == {"n": 0}


def test_without_confirms_publish_is_fire_and_forget(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": False}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        assert conn.transport is not None
        assert conn.transport.info()["confirm_publish"] is False
        for _ in range(10):
            assert ch.publish_batch(envelopes(queue, 100)) == []
        assert count_becomes(ch, queue, 1000) == 1000


def test_unroutable_mandatory_messages_come_back_from_that_publish(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        routable = envelopes(queue, 3, mandatory=True)
        lost = envelopes(names("nowhere"), 2, mandatory=True)
        batch = [routable[0], lost[0], routable[1], lost[1], routable[2]]
        returned = ch.publish_batch(batch)
        assert returned == lost  # the same envelope objects, in order
        assert count_becomes(ch, queue, 3) == 3


def test_producer_on_return_is_called(amqp_url: str, names: Callable[[str], str]) -> None:
    seen: list[Any] = []
    with kelp.Connection(amqp_url) as conn:
        producer = conn.Producer(on_return=lambda exc, exchange, key, message: seen.append((key, exc)))
        producer.publish("x", routing_key=names("nowhere"), mandatory=True)
        assert len(seen) == 1
        assert seen[0][1].reply_code == 312


def test_without_confirms_a_late_return_comes_back_from_the_next_publish(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    nowhere = names("nowhere")
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": False}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.publish_batch([Envelope(b"lost", {"message_id": "m1"}, {"h": 1}, "", nowhere, True)])
        ch.queue_declare(queue, passive=True)  # the return precedes this reply on the channel
        returned = ch.publish_batch(envelopes(queue, 1))
        assert [(e.body, e.routing_key, e.properties.get("message_id"), e.headers) for e in returned] == [
            (b"lost", nowhere, "m1", {"h": 1})
        ]
