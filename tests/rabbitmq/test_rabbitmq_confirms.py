"""Publisher confirms, negative confirms and mandatory returns on amqp:// (sync face).

Confirms are pipelined by default (publish returns once written; ``flush`` waits for the confirms);
``confirm_publish=True`` waits per publish; ``confirms=False`` turns confirm mode off."""

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


def test_publish_returns_before_the_confirms_and_flush_waits_for_them(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        transport = conn.transport
        assert transport is not None
        assert transport.info()["confirms"] is True
        assert transport.info()["confirm_publish"] is False
        batch = envelopes(queue, 5000)
        assert ch.publish_batch(batch) == []
        # 5,000 persistent messages cannot all be confirmed the moment their write returns
        pending = transport.unconfirmed()
        assert pending
        assert pending == batch[-len(pending) :]  # the outbox, in publish order
        assert ch.publish_batch(envelopes(queue, 1)) == []
        conn.flush(timeout=30)
        assert transport.unconfirmed() == []
        assert transport.info()["unconfirmed"] == 0
        assert count_becomes(ch, queue, 5001) == 5001


def test_confirm_publish_waits_for_each_batch(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        assert conn.transport is not None
        assert ch.publish_batch(envelopes(queue, 5000)) == []
        assert conn.transport.unconfirmed() == []
        assert ch.queue_declare(queue, passive=True).message_count == 5000


def test_reject_publish_overflow_raises_message_nacked(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        assert ch.publish_batch(envelopes(queue, 2)) == []
        batch = envelopes(queue, 3)
        with pytest.raises(MessageNacked, match="refused 3 published messages") as raised:
            ch.publish_batch(batch)
        assert raised.value.envelopes == batch
        # a nack does not close the channel
        assert ch.queue_declare(queue, passive=True).message_count == 2
        conn.flush()  # each refusal is reported once


def test_producer_publish_with_confirm_publish_waits_for_the_confirm(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = kelp.Queue(names("q"), durable=True, auto_delete=False)
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        assert conn.transport is not None
        for i in range(50):
            producer.publish({"n": i}, routing_key=queue.name, declare=[queue])
            assert conn.transport.unconfirmed() == []
        message = conn.default_channel.basic_get(queue.name)
        assert message is not None
        assert message.decode() == {"n": 0}


def test_without_confirms_publish_is_fire_and_forget(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, transport_options={"confirms": False}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        assert conn.transport is not None
        assert conn.transport.info()["confirms"] is False
        assert conn.transport.unconfirmed() == []
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
    with kelp.Connection(amqp_url, transport_options={"confirms": False}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        # The return comes back from this publish when it arrived while the publish read what the
        # broker had sent before returning; else from the next one (it precedes the reply below).
        lost = Envelope(b"lost", {"message_id": "m1"}, {"h": 1}, "", nowhere, True)
        returned = ch.publish_batch([lost])
        ch.queue_declare(queue, passive=True)
        returned += ch.publish_batch(envelopes(queue, 1))
        assert [(e.body, e.routing_key, e.properties.get("message_id"), e.headers) for e in returned] == [
            (b"lost", nowhere, "m1", {"h": 1})
        ]
