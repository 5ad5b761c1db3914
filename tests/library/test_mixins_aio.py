"""ConsumerMixin / ConsumerProducerMixin, asyncio face: the run loop in a task."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from kelp.aio import Connection, Exchange, Producer, Queue
from kelp.aio.mixins import ConsumerMixin, ConsumerProducerMixin
from kelp.aio.simple import SimpleQueue
from kelp.exceptions import OperationalError

WAIT = 5.0


class Worker(ConsumerMixin):
    restart_interval_start = 0.05

    def __init__(self, connection, queue, expected=0, fail_first=0):
        self.connection = connection
        self.queue = queue
        self.expected = expected
        self.fail_first = fail_first
        self.bodies = []
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.contexts = []

    async def get_consumers(self, Consumer, channel):  # may be async in kelp.aio
        if self.fail_first:
            self.fail_first -= 1
            raise OperationalError("broker went away (simulated)")
        return [Consumer(queues=[self.queue], callbacks=[self.on_task])]

    async def on_task(self, body, message):
        self.bodies.append(body)
        await message.ack()
        if len(self.bodies) >= self.expected:
            self.done.set()

    def on_consume_ready(self, connection, channel, consumers, **kwargs):  # plain hooks work too
        self.ready.set()

    @contextlib.asynccontextmanager
    async def extra_context(self, connection, channel):
        self.contexts.append("enter")
        yield
        self.contexts.append("exit")


async def _publish(url, queue, bodies):
    async with Connection(url) as conn:
        producer = Producer(conn)
        for body in bodies:
            await producer.publish(
                body, exchange=queue.exchange, routing_key=queue.routing_key or queue.name, declare=[queue]
            )


async def _stop(worker, task):
    worker.should_stop = True
    await asyncio.wait_for(task, WAIT)


async def test_run_in_a_task_processes_and_stops(url, name):
    queue = Queue(name, Exchange(name, "topic"), "jobs.#")
    worker = Worker(Connection(url), queue, expected=4)
    task = asyncio.create_task(worker.run(safety_interval=0.1))
    try:
        await asyncio.wait_for(worker.ready.wait(), WAIT)
        await _publish(url, Queue(name, Exchange(name, "topic"), "jobs.a"), range(4))
        await asyncio.wait_for(worker.done.wait(), WAIT)
    finally:
        started = time.monotonic()
        await _stop(worker, task)
    assert time.monotonic() - started < 1.0
    assert worker.bodies == [0, 1, 2, 3]
    assert worker.contexts == ["enter", "exit"]


async def test_run_restarts_after_errors(url, name):
    queue = Queue(name)
    worker = Worker(Connection(url), queue, expected=1, fail_first=1)
    task = asyncio.create_task(worker.run(safety_interval=0.1))
    try:
        await asyncio.wait_for(worker.ready.wait(), WAIT)
        await _publish(url, queue, ["x"])
        await asyncio.wait_for(worker.done.wait(), WAIT)
    finally:
        await _stop(worker, task)
    assert worker.bodies == ["x"]


async def test_stop_during_restart_backoff_is_prompt(url, name):
    worker = Worker(Connection(url), Queue(name), fail_first=1000)
    worker.restart_interval_start = 30  # would sleep long; should_stop must cut it short
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await _stop(worker, task)
    assert time.monotonic() - started < 1.0


async def test_cancelling_the_task_returns_unacked_messages(url, name):
    queue = Queue(name)
    held = []

    class Holder(Worker):
        async def on_task(self, body, message):  # never acks
            held.append(message)
            self.done.set()

    worker = Holder(Connection(url), queue)
    task = asyncio.create_task(worker.run(safety_interval=0.1))
    await asyncio.wait_for(worker.ready.wait(), WAIT)
    await _publish(url, queue, ["held"])
    await asyncio.wait_for(worker.done.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with Connection(url) as conn:  # the worker's connection closed: the message is back
        message = await Queue(name).bind(conn.default_channel).get()
        assert message is not None
        assert (message.payload, message.redelivered) == ("held", True)
        await message.ack()


async def test_consume_timeout(url, name):
    worker = Worker(Connection(url), Queue(name))
    with pytest.raises(socket.timeout):
        async for _ in worker.consume(timeout=0.2, safety_interval=0.1):
            pass


class Echo(ConsumerProducerMixin):
    def __init__(self, connection, queue):
        self.connection = connection
        self.queue = queue
        self.ready = asyncio.Event()

    def get_consumers(self, Consumer, channel):
        return [Consumer(queues=[self.queue], on_message=self.handle)]

    async def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self.ready.set()

    async def handle(self, message):
        await self.producer.publish(
            {"echo": message.payload},
            exchange="",
            routing_key=message.properties["reply_to"],
            correlation_id=message.properties["correlation_id"],
        )
        await message.ack()


async def test_consumer_producer_mixin_replies(url, name):
    requests = Queue(name)
    server = Echo(Connection(url), requests)
    task = asyncio.create_task(server.run(safety_interval=0.1))
    try:
        await asyncio.wait_for(server.ready.wait(), WAIT)
        async with Connection(url) as client, SimpleQueue(client, name + ".reply") as replies:
            await Producer(client).publish(
                "ping", routing_key=name, reply_to=replies.queue.name, correlation_id="r1", declare=[requests]
            )
            reply = await replies.get(timeout=WAIT)
            assert reply.payload == {"echo": "ping"}
            assert reply.properties["correlation_id"] == "r1"
            await reply.ack()
            assert server._producer_connection is not None
            assert server._producer_connection.connected
    finally:
        await _stop(server, task)
    assert server._producer_connection is None
