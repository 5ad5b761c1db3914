"""A refused operation raises the mapped error, closes the AMQP channel, and the channel object recovers."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

import kelp
from kelp._envelope import Envelope
from kelp.exceptions import MessageNacked, NotFound, PreconditionFailed, ResourceLocked


def test_channel_is_reopened_after_a_refusal(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        with pytest.raises(NotFound):
            ch.queue_declare(names("missing"), passive=True)
        ch.queue_declare(queue, durable=False)
        with pytest.raises(PreconditionFailed):
            ch.queue_declare(queue, durable=True)
        assert ch.queue_declare(queue, passive=True).queue == queue


def test_exclusive_queue_of_another_connection_is_locked(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as owner, kelp.Connection(amqp_url) as other:
        owner.channel().queue_declare(queue, exclusive=True)
        with pytest.raises(ResourceLocked):
            other.channel().queue_declare(queue, exclusive=True)


def test_qos_is_reapplied_on_the_reopened_channel(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        for i in range(3):
            ch.basic_publish(ch.prepare_message(b"%d" % i), routing_key=queue)
        conn.flush()  # confirmed before the refused command closes the channel
        ch.basic_qos(prefetch_count=1)
        with pytest.raises(NotFound):
            ch.queue_declare(names("missing"), passive=True)
        got: list[kelp.Message] = []
        ch.basic_consume(queue, callback=got.append)
        for _ in range(4):
            try:
                conn.drain_events(timeout=0.25)
            except TimeoutError:
                pass
        assert [m.body for m in got] == [b"0"]


def test_publish_to_a_missing_exchange(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    missing = names("x")
    with kelp.Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        with pytest.raises(NotFound):  # waiting for its confirm, the publish itself raises
            ch.publish_batch([Envelope(b"a", {}, {}, missing, "k")])
        assert ch.publish_batch([Envelope(b"b", {}, {}, "", queue)]) == []
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        lost = Envelope(b"a", {}, {}, missing, "k")

        def publish_and_flush() -> None:
            # Pipelined: the refusal comes from flush - or from the publish itself, when the channel's
            # closing arrived while the publish read what the broker had sent before returning.
            ch.publish_batch([lost])
            conn.flush(timeout=10)

        with pytest.raises(MessageNacked, match="closed their channel") as raised:
            publish_and_flush()
        assert raised.value.envelopes == [lost]
        assert raised.value.reply_code == 404
        assert isinstance(raised.value.__cause__, NotFound)
        assert ch.publish_batch([Envelope(b"c", {}, {}, "", queue)]) == []  # the channel was reopened
        conn.flush(timeout=10)
    with kelp.Connection(amqp_url, transport_options={"confirms": False}) as conn:
        ch = conn.channel()
        ch.publish_batch([Envelope(b"a", {}, {}, missing, "k")])

        def declare_until_refused() -> None:
            for _ in range(50):
                ch.queue_declare(queue, passive=True)

        with pytest.raises(NotFound):  # without confirms, the channel's next operation does
            declare_until_refused()
        assert ch.queue_declare(queue, passive=True).message_count == 2


def test_settling_a_delivery_of_a_closed_channel_is_ignored(
    amqp_url: str, names: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.basic_publish(ch.prepare_message(b"once"), routing_key=queue)
        conn.flush()  # confirmed before the refused command closes the channel
        message = ch.basic_get(queue)
        assert message is not None
        with pytest.raises(NotFound):
            ch.queue_declare(names("missing"), passive=True)
        with caplog.at_level(logging.WARNING, logger="kelp.transport.amqp"):
            message.ack()
        assert "requeued it" in caplog.text
        again = ch.basic_get(queue)
        assert again is not None
        assert again.body == b"once"
        assert again.redelivered
        again.ack()
        assert ch.basic_get(queue) is None
