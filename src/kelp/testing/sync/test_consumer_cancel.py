# Generated from src/kelp/testing/aio/test_consumer_cancel.py by scripts/unasync.py; do not edit.
"""Cancellation by the broker: a queue deleted under its consumers cancels them (RabbitMQ's basic.cancel).

``drain_events`` raises ConsumerCancelled for each cancelled consumer; the Consumer stops listing the queue
and its ``consume()`` declares the queue again and resubscribes. A ConsumerMixin recovers by itself.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kelp import Connection, Queue
from kelp.exceptions import ConsumerCancelled, OperationalError
from kelp.mixins import ConsumerMixin

from .helpers import WAIT, Names, declared, drain_until, queue_gone


def _drain_until_cancelled(conn: Connection) -> ConsumerCancelled:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.25)
        except ConsumerCancelled as exc:
            return exc
        except TimeoutError:
            pass
    raise AssertionError("drain_events never raised ConsumerCancelled")


def test_deleting_the_queue_cancels_its_consumer(broker_url: str, names: Names) -> None:
    received: list[Any] = []

    def on_message(message: Any) -> None:
        received.append(message)

    with Connection(broker_url) as conn, Connection(broker_url) as other:
        queue = Queue(names("q"))
        declared(conn, queue)
        consumer = conn.Consumer([queue], on_message=on_message)
        with consumer:
            other.Producer().publish({"n": 1}, routing_key=queue.name)
            assert drain_until(conn, lambda: bool(received))
            [tag] = consumer._tags.values()

            other.default_channel.queue_delete(queue.name)
            cancelled = _drain_until_cancelled(conn)
            assert cancelled.consumer_tag == tag
            assert isinstance(cancelled, OperationalError)  # recoverable: reconnecting helps
            assert consumer.active_queues == []
            received[0].ack()  # what was delivered before can still be settled

            # consume() declares the queue again and resubscribes
            consumer.consume()
            assert consumer.active_queues == [queue.name]
            other.Producer().publish({"n": 2}, routing_key=queue.name)
            assert drain_until(conn, lambda: len(received) == 2)
            assert received[1].payload == {"n": 2}
            received[1].ack()


def test_a_consumer_with_a_full_prefetch_window_is_cancelled_too(broker_url: str, names: Names) -> None:
    received: list[Any] = []
    with Connection(broker_url) as conn, Connection(broker_url) as other:
        queue = Queue(names("q"))
        declared(conn, queue)
        with conn.Consumer([queue], on_message=received.append, prefetch_count=1):
            for n in range(2):
                other.Producer().publish(n, routing_key=queue.name)
            assert drain_until(conn, lambda: bool(received))
            other.default_channel.queue_delete(queue.name)
            _drain_until_cancelled(conn)  # while the one message it holds is still unacked
            assert len(received) == 1
            received[0].ack()


def test_only_the_consumers_of_the_deleted_queue_are_cancelled(broker_url: str, names: Names) -> None:
    bodies: list[object] = []
    with Connection(broker_url) as conn, Connection(broker_url) as other:
        doomed, kept = Queue(names("doomed")), Queue(names("kept"))
        consumer = conn.Consumer([doomed, kept], callbacks=[lambda body, message: bodies.append(body)])
        with consumer:
            other.default_channel.queue_delete(doomed.name)
            _drain_until_cancelled(conn)
            assert consumer.active_queues == [kept.name]
            other.Producer().publish("still here", routing_key=kept.name)
            assert drain_until(conn, lambda: bool(bodies))
            assert bodies == ["still here"]
            with pytest.raises(TimeoutError):  # each cancellation is reported once
                conn.drain_events(timeout=0.2)


def test_cancelling_the_last_consumer_of_an_auto_delete_queue_is_not_a_broker_cancel(
    broker_url: str, names: Names
) -> None:
    bodies: list[object] = []
    with Connection(broker_url) as conn, Connection(broker_url) as other:
        temporary, kept = Queue(names("temp"), auto_delete=True), Queue(names("kept"))
        first = conn.Consumer([temporary], callbacks=[lambda body, message: None])
        second = conn.Consumer([kept], callbacks=[lambda body, message: bodies.append(body)])
        first.consume()
        second.consume()
        first.cancel()  # the queue goes with its last consumer
        assert queue_gone(other, temporary.name)
        other.Producer().publish("after", routing_key=kept.name)
        assert drain_until(conn, lambda: bool(bodies))  # no ConsumerCancelled on the way
        second.cancel()


class _Worker(ConsumerMixin):
    restart_interval_start = 0.05

    def __init__(self, connection: Any, other: Any, queue: Any) -> None:
        self.connection = connection
        self.other = other
        self.queue = queue
        self.ready = 0
        self.deleted = False
        self.bodies: list[Any] = []
        self.deadline = time.monotonic() + WAIT

    def get_consumers(self, Consumer: Any, channel: Any) -> Any:
        return [Consumer(queues=[self.queue], callbacks=[self.on_body])]

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        self.ready += 1
        if self.ready == 2:  # resubscribed: the queue exists again
            self.other.Producer().publish("after", routing_key=self.queue.name)

    def on_iteration(self) -> None:
        if self.ready == 1 and not self.deleted:
            self.deleted = True
            self.other.default_channel.queue_delete(self.queue.name)
        if self.ready > 3 or time.monotonic() > self.deadline:
            self.should_stop = True  # restarting in a loop, or never cancelled: give up, the test fails

    def on_body(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        message.ack()
        self.should_stop = True


def test_consumer_mixin_declares_again_and_resubscribes(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn, Connection(broker_url) as other:
        worker = _Worker(conn, other, Queue(names("q")))
        worker.run(safety_interval=0.1)
        assert worker.deleted
        assert worker.ready == 2
        assert worker.bodies == ["after"]
