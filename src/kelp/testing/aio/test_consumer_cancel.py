"""Cancellation by the broker: a queue deleted under its consumers cancels them (RabbitMQ's basic.cancel).

``drain_events`` raises ConsumerCancelled for each cancelled consumer; the Consumer stops listing the queue
and its ``consume()`` declares the queue again and resubscribes. A ConsumerMixin recovers by itself.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kelp.aio import Connection, Queue
from kelp.aio.mixins import ConsumerMixin
from kelp.exceptions import ConsumerCancelled, OperationalError

from .helpers import WAIT, Names, declared, drain_until, queue_gone


async def _drain_until_cancelled(conn: Connection) -> ConsumerCancelled:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            await conn.drain_events(timeout=0.25)
        except ConsumerCancelled as exc:
            return exc
        except TimeoutError:
            pass
    raise AssertionError("drain_events never raised ConsumerCancelled")


async def test_deleting_the_queue_cancels_its_consumer(broker_url: str, names: Names) -> None:
    received: list[Any] = []

    async def on_message(message: Any) -> None:
        received.append(message)

    async with Connection(broker_url) as conn, Connection(broker_url) as other:
        queue = Queue(names("q"))
        await declared(conn, queue)
        consumer = conn.Consumer([queue], on_message=on_message)
        async with consumer:
            await other.Producer().publish({"n": 1}, routing_key=queue.name)
            assert await drain_until(conn, lambda: bool(received))
            [tag] = consumer._tags.values()

            await other.default_channel.queue_delete(queue.name)
            cancelled = await _drain_until_cancelled(conn)
            assert cancelled.consumer_tag == tag
            assert isinstance(cancelled, OperationalError)  # recoverable: reconnecting helps
            assert consumer.active_queues == []
            await received[0].ack()  # what was delivered before can still be settled

            # consume() declares the queue again and resubscribes
            await consumer.consume()
            assert consumer.active_queues == [queue.name]
            await other.Producer().publish({"n": 2}, routing_key=queue.name)
            assert await drain_until(conn, lambda: len(received) == 2)
            assert received[1].payload == {"n": 2}
            await received[1].ack()


async def test_a_consumer_with_a_full_prefetch_window_is_cancelled_too(broker_url: str, names: Names) -> None:
    received: list[Any] = []
    async with Connection(broker_url) as conn, Connection(broker_url) as other:
        queue = Queue(names("q"))
        await declared(conn, queue)
        async with conn.Consumer([queue], on_message=received.append, prefetch_count=1):
            for n in range(2):
                await other.Producer().publish(n, routing_key=queue.name)
            assert await drain_until(conn, lambda: bool(received))
            await other.default_channel.queue_delete(queue.name)
            await _drain_until_cancelled(conn)  # while the one message it holds is still unacked
            assert len(received) == 1
            await received[0].ack()


async def test_only_the_consumers_of_the_deleted_queue_are_cancelled(broker_url: str, names: Names) -> None:
    bodies: list[object] = []
    async with Connection(broker_url) as conn, Connection(broker_url) as other:
        doomed, kept = Queue(names("doomed")), Queue(names("kept"))
        consumer = conn.Consumer([doomed, kept], callbacks=[lambda body, message: bodies.append(body)])
        async with consumer:
            await other.default_channel.queue_delete(doomed.name)
            await _drain_until_cancelled(conn)
            assert consumer.active_queues == [kept.name]
            await other.Producer().publish("still here", routing_key=kept.name)
            assert await drain_until(conn, lambda: bool(bodies))
            assert bodies == ["still here"]
            with pytest.raises(TimeoutError):  # each cancellation is reported once
                await conn.drain_events(timeout=0.2)


async def test_cancelling_the_last_consumer_of_an_auto_delete_queue_is_not_a_broker_cancel(
    broker_url: str, names: Names
) -> None:
    bodies: list[object] = []
    async with Connection(broker_url) as conn, Connection(broker_url) as other:
        temporary, kept = Queue(names("temp"), auto_delete=True), Queue(names("kept"))
        first = conn.Consumer([temporary], callbacks=[lambda body, message: None])
        second = conn.Consumer([kept], callbacks=[lambda body, message: bodies.append(body)])
        await first.consume()
        await second.consume()
        await first.cancel()  # the queue goes with its last consumer
        assert await queue_gone(other, temporary.name)
        await other.Producer().publish("after", routing_key=kept.name)
        assert await drain_until(conn, lambda: bool(bodies))  # no ConsumerCancelled on the way
        await second.cancel()


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

    async def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        self.ready += 1
        if self.ready == 2:  # resubscribed: the queue exists again
            await self.other.Producer().publish("after", routing_key=self.queue.name)

    async def on_iteration(self) -> None:
        if self.ready == 1 and not self.deleted:
            self.deleted = True
            await self.other.default_channel.queue_delete(self.queue.name)
        if self.ready > 3 or time.monotonic() > self.deadline:
            self.should_stop = True  # restarting in a loop, or never cancelled: give up, the test fails

    async def on_body(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        await message.ack()
        self.should_stop = True


async def test_consumer_mixin_declares_again_and_resubscribes(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn, Connection(broker_url) as other:
        worker = _Worker(conn, other, Queue(names("q")))
        await worker.run(safety_interval=0.1)
        assert worker.deleted
        assert worker.ready == 2
        assert worker.bodies == ["after"]
