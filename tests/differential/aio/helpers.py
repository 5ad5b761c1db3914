"""The face-specific half of the differential harness, written once for both faces.

``scripts/unasync.py`` rewrites this module into ``sync/helpers.py``. The sync twin of every scenario runs
under Kombu (the reference, see ``harness.reference``) and under kelp; the async source runs under
``kelp.aio``. Where Kombu's API and ``kelp.aio``'s differ in more than ``await``, a helper here bridges them,
so that no scenario is written twice. Every wait is a poll bounded by a deadline: RabbitMQ applies
requeues, dead letters and counts asynchronously, and the machine may be loaded.
"""

from __future__ import annotations

import asyncio  # async-only
import inspect  # async-only
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import kelp.aio
import kelp.aio.common
import kelp.aio.message
import kelp.aio.messaging
import kelp.aio.mixins
import kelp.aio.pools
import kelp.aio.simple
import kelp.compression
import kelp.exceptions
import kelp.serialization

from ..harness import Failed, Names, Scenario, plain, reference

#: The face this module is: "aio" in the source, "sync" in the generated twin.
FACE = "aio"  # async-only
# sync-only: FACE = "sync"

#: How long a scenario waits for something that should happen (waits end as soon as it does).
WAIT = 5.0

KELP = SimpleNamespace(
    name="kelp",
    Connection=kelp.aio.Connection,
    Exchange=kelp.aio.Exchange,
    Queue=kelp.aio.Queue,
    Producer=kelp.aio.Producer,
    Consumer=kelp.aio.Consumer,
    binding=kelp.aio.binding,
    common=kelp.aio.common,
    exceptions=kelp.exceptions,
    broker_errors=kelp.exceptions,
    messaging=kelp.aio.messaging,
    message=kelp.aio.message,
    mixins=kelp.aio.mixins,
    pools=kelp.aio.pools,
    simple=kelp.aio.simple,
    serialization=kelp.serialization,
    compression=kelp.compression,
)


async def run(lib: Any, url: str, scenario: Scenario, *args: Any) -> Any:
    """Run ``scenario(lib, conn, names, *args)`` under ``lib`` on ``url``; its result as plain data.
    Entities it named are deleted afterwards (the reference broker is shared)."""
    names = Names()
    try:
        async with lib.Connection(url) as conn:
            return plain(await scenario(lib, conn, names, *args), names)
    finally:
        await _cleanup(lib, url, names)


async def same(reference_url: str, subject_url: str, scenario: Scenario, *args: Any) -> None:
    """``scenario(*args)`` observes under kelp on ``subject_url`` what it observes under Kombu."""
    expected = reference(reference_url, scenario, args)
    actual = await run(KELP, subject_url, scenario, *args)
    assert actual == expected


async def _cleanup(lib: Any, url: str, names: Names) -> None:
    if not names.made:
        return
    try:
        async with lib.Connection(url) as conn:
            for real in names.made:
                for delete in ("queue_delete", "exchange_delete"):
                    try:
                        channel = await conn.channel()
                        await getattr(channel, delete)(real)
                    except Exception:  # cleanup must never fail a test
                        pass
    except Exception:
        pass


async def attempt(step: Callable[[], Any]) -> Any:
    """The step's result (awaited when the face returns an awaitable), or :class:`Failed` with the class of
    what it raised."""
    try:
        result = step()
        if inspect.isawaitable(result):  # async-only
            result = await result  # async-only
        return result
    except Exception as exc:
        return Failed(exc)


async def sleep(seconds: float) -> None:
    """Sleep in the face's own way (only TTL scenarios need wall-clock time to pass)."""
    await asyncio.sleep(seconds)  # async-only
    # sync-only: time.sleep(seconds)


async def on_new_channel(conn: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``conn.channel().<method>(*args, **kwargs)``: a channel error closes only that channel."""
    channel = await conn.channel()
    return await getattr(channel, method)(*args, **kwargs)


async def declared(lib: Any, conn: Any, names: Names, **kwargs: Any) -> Any:
    """A fresh queue, declared and bound to the default channel."""
    queue = lib.Queue(names("q"), **kwargs)(conn.default_channel)
    await queue.declare()
    return queue


async def take(queue: Any, n: int, ack: bool = True, accept: list[str] | None = None) -> list[Any]:
    """Up to ``n`` messages by ``Queue.get``, acked unless ``ack`` is false; stops at the first miss."""
    got = []
    for _ in range(n):
        message = await queue.get(accept=accept)
        if message is None:
            break
        if ack:
            await message.ack()
        got.append(message)
    return got


async def wait_take(queue: Any, n: int, timeout: float = WAIT) -> list[Any]:
    """Take ``n`` messages, polling: RabbitMQ moves dead letters and requeues asynchronously."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(await take(queue, n - len(got)))
        if len(got) < n:
            await sleep(0.02)
    return got


async def count(queue: Any, expected: int, timeout: float = WAIT) -> int:
    """The queue's ready count, polled until it is ``expected`` or the deadline passes (then whatever it
    is, so a wrong count still shows in the comparison)."""
    deadline = time.monotonic() + timeout
    while True:
        found = (await queue.queue_declare(passive=True)).message_count
        if found == expected or time.monotonic() >= deadline:
            return int(found)
        await sleep(0.02)


async def drain_until(conn: Any, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Dispatch deliveries on ``conn`` until ``predicate()`` holds; False if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            await conn.drain_events(timeout=min(remaining, 0.2))
        except TimeoutError:
            pass
    return True


def raw(body: Any) -> Any:
    """The body as bytes: py-amqp hands Kombu a str when content_encoding is a text encoding, kelp always
    bytes (docs/migrating-from-kombu.md); the content is compared."""
    return body.encode("utf-8") if isinstance(body, str) else body
