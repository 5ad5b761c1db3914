"""Helpers for the conformance tests, written once for both faces.

This module is rewritten into ``sync/helpers.py`` by ``scripts/unasync.py``; lines marked ``# async-only``
and ``# sync-only:`` are where the faces differ. Every wait here is bounded by a deadline.
"""

from __future__ import annotations

import asyncio  # async-only
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from kelp.aio import Connection, Consumer, Queue
from kelp.exceptions import NotFound, ResourceLocked

#: The ``names`` fixture: ``names("q") -> "q-<hex>"``, a name no other test uses.
Names = Callable[[str], str]

#: How long a test waits for something that should happen; generous, since waits end as soon as it does.
WAIT = 5.0
#: How long a test listens to show that something does NOT happen.
QUIET = 0.2


async def sleep(seconds: float) -> None:
    """Sleep in the face's own way (only TTL and expiry tests need wall-clock time to pass)."""
    await asyncio.sleep(seconds)  # async-only
    # sync-only: time.sleep(seconds)


async def drain_until(conn: Connection, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Dispatch deliveries on ``conn`` until ``predicate()`` holds; False if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            await conn.drain_events(timeout=min(remaining, 0.25))
        except TimeoutError:
            pass
    return True


async def drain_for(conn: Connection, seconds: float = QUIET) -> None:
    """Dispatch whatever arrives on ``conn`` during ``seconds`` (to show that nothing more comes)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            await conn.drain_events(timeout=remaining)
        except TimeoutError:
            pass


async def eventually(check: Callable[[], Any], timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Poll the coroutine function ``check`` until it returns a truthy value; False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await sleep(interval)


class Inbox:
    """A consumer callback that records what it is given: ``bodies`` (decoded) and ``messages``."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.messages: list[Any] = []
        self.consumer: Consumer | None = None

    def __call__(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        self.messages.append(message)

    def __len__(self) -> int:
        return len(self.messages)

    async def wait(self, conn: Connection, n: int, timeout: float = WAIT) -> bool:
        """Drain ``conn`` until at least ``n`` messages arrived."""
        return await drain_until(conn, lambda: len(self.messages) >= n, timeout)


@asynccontextmanager
async def consuming(conn: Connection, queues: Any, **kwargs: Any) -> AsyncIterator[Inbox]:
    """Consume ``queues`` on ``conn`` into an :class:`Inbox` for the duration of the block."""
    inbox = Inbox()
    consumer = conn.Consumer(queues, callbacks=[inbox], **kwargs)
    async with consumer:
        inbox.consumer = consumer
        yield inbox


async def collect(conn: Connection, consumer: Consumer, n: int, timeout: float = WAIT) -> list[Any]:
    """Register a recorder on an already consuming ``consumer`` and return the first ``n`` messages
    (fewer if the deadline passes)."""
    got: list[Any] = []
    consumer.register_callback(lambda body, message: got.append(message))
    await drain_until(conn, lambda: len(got) >= n, timeout)
    return got


async def declared(conn: Connection, entity: Any, channel: Any = None) -> Any:
    """Bind ``entity`` (a Queue or Exchange) to ``channel`` (default: the connection's) and declare it."""
    bound = entity(channel if channel is not None else conn.default_channel)
    await bound.declare()
    return bound


async def fetch(
    bound_queue: Any, n: int, timeout: float = WAIT, ack: bool = True, no_ack: bool = False
) -> list[Any]:
    """Take ``n`` messages with ``get`` (polling briefly for ones still in flight, e.g. published on
    another connection), acking each unless ``ack`` is false or ``no_ack`` is true. Returns fewer if the
    deadline passes."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        message = await bound_queue.get(no_ack=no_ack)
        if message is None:
            if time.monotonic() >= deadline:
                break
            await sleep(0.01)
            continue
        if ack and not no_ack:
            await message.ack()
        got.append(message)
    return got


async def payloads(bound_queue: Any, n: int, timeout: float = WAIT) -> list[Any]:
    """The decoded payloads of the next ``n`` messages of ``bound_queue``, acked."""
    return [message.payload for message in await fetch(bound_queue, n, timeout)]


async def take_all(bound_queue: Any) -> list[Any]:
    """The payloads of every message ready in ``bound_queue`` right now, acked."""
    got = []
    while (message := await bound_queue.get()) is not None:
        await message.ack()
        got.append(message.payload)
    return got


async def message_count(bound_queue: Any) -> int:
    """The queue's ready-message count, as ``queue_declare(passive=True)`` reports it."""
    return int((await bound_queue.queue_declare(passive=True)).message_count)


async def count_becomes(bound_queue: Any, expected: int, timeout: float = WAIT) -> bool:
    """Wait (bounded) until the queue reports ``expected`` ready messages. A broker may answer a count
    before it has enqueued messages just published (RabbitMQ serves queue stats ahead of deliveries)."""

    async def reached() -> bool:
        return await message_count(bound_queue) == expected

    return await eventually(reached, timeout=timeout)


async def queue_exists(conn: Connection, name: str) -> bool:
    """Whether the queue exists, asked on a fresh channel (a refusal closes the channel on AMQP)."""
    channel = await conn.channel()
    try:
        await Queue(name)(channel).queue_declare(passive=True)
    except NotFound:
        return False
    except ResourceLocked:  # exclusive to another connection: it exists
        return True
    return True


async def queue_gone(conn: Connection, name: str, timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Wait (bounded) until the queue no longer exists; brokers may delete asynchronously. Each check is a
    passive declare, which renews an ``expires`` lease on RabbitMQ: to watch a queue expire, poll at an
    ``interval`` longer than its ``expires``."""

    async def gone() -> bool:
        return not await queue_exists(conn, name)

    return await eventually(gone, timeout=timeout, interval=interval)
