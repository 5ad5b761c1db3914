# Generated from tests/differential/aio/helpers.py by scripts/unasync.py; do not edit.
"""The face-specific half of the differential harness, written once for both faces.

``scripts/unasync.py`` rewrites this module into ``sync/helpers.py``. The sync twin of every scenario runs
under Kombu (the reference, see ``harness.reference``) and under kelp; the async source runs under
``kelp``. Where Kombu's API and ``kelp``'s differ in more than ``await``, a helper here bridges them,
so that no scenario is written twice. Every wait is a poll bounded by a deadline: RabbitMQ applies
requeues, dead letters and counts asynchronously, and the machine may be loaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import kelp
import kelp.common
import kelp.compression
import kelp.exceptions
import kelp.message
import kelp.messaging
import kelp.mixins
import kelp.pools
import kelp.serialization
import kelp.simple

from ..harness import Failed, Names, Scenario, plain, reference

#: The face this module is: "aio" in the source, "sync" in the generated twin.
FACE = "sync"

#: How long a scenario waits for something that should happen (waits end as soon as it does).
WAIT = 5.0

KELP = SimpleNamespace(
    name="kelp",
    Connection=kelp.Connection,
    Exchange=kelp.Exchange,
    Queue=kelp.Queue,
    Producer=kelp.Producer,
    Consumer=kelp.Consumer,
    binding=kelp.binding,
    common=kelp.common,
    exceptions=kelp.exceptions,
    broker_errors=kelp.exceptions,
    messaging=kelp.messaging,
    message=kelp.message,
    mixins=kelp.mixins,
    pools=kelp.pools,
    simple=kelp.simple,
    serialization=kelp.serialization,
    compression=kelp.compression,
)


def run(lib: Any, url: str, scenario: Scenario, *args: Any) -> Any:
    """Run ``scenario(lib, conn, names, *args)`` under ``lib`` on ``url``; its result as plain data.
    Entities it named are deleted afterwards (the reference broker is shared)."""
    names = Names()
    try:
        with lib.Connection(url) as conn:
            return plain(scenario(lib, conn, names, *args), names)
    finally:
        _cleanup(lib, url, names)


def same(reference_url: str, subject_url: str, scenario: Scenario, *args: Any) -> None:
    """``scenario(*args)`` observes under kelp on ``subject_url`` what it observes under Kombu."""
    expected = reference(reference_url, scenario, args)
    actual = run(KELP, subject_url, scenario, *args)
    assert actual == expected


def _cleanup(lib: Any, url: str, names: Names) -> None:
    if not names.made:
        return
    try:
        with lib.Connection(url) as conn:
            for real in names.made:
                for delete in ("queue_delete", "exchange_delete"):
                    try:
                        channel = conn.channel()
                        getattr(channel, delete)(real)
                    except Exception:  # cleanup must never fail a test
                        pass
    except Exception:
        pass


def attempt(step: Callable[[], Any]) -> Any:
    """The step's result (awaited when the face returns an awaitable), or :class:`Failed` with the class of
    what it raised."""
    try:
        result = step()
        return result
    except Exception as exc:
        return Failed(exc)


def sleep(seconds: float) -> None:
    """Sleep in the face's own way (only TTL scenarios need wall-clock time to pass)."""
    time.sleep(seconds)


def on_new_channel(conn: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``conn.channel().<method>(*args, **kwargs)``: a channel error closes only that channel."""
    channel = conn.channel()
    return getattr(channel, method)(*args, **kwargs)


def declared(lib: Any, conn: Any, names: Names, **kwargs: Any) -> Any:
    """A fresh queue, declared and bound to the default channel."""
    queue = lib.Queue(names("q"), **kwargs)(conn.default_channel)
    queue.declare()
    return queue


def take(queue: Any, n: int, ack: bool = True, accept: list[str] | None = None) -> list[Any]:
    """Up to ``n`` messages by ``Queue.get``, acked unless ``ack`` is false; stops at the first miss."""
    got = []
    for _ in range(n):
        message = queue.get(accept=accept)
        if message is None:
            break
        if ack:
            message.ack()
        got.append(message)
    return got


def wait_take(queue: Any, n: int, timeout: float = WAIT) -> list[Any]:
    """Take ``n`` messages, polling: RabbitMQ moves dead letters and requeues asynchronously."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(take(queue, n - len(got)))
        if len(got) < n:
            sleep(0.02)
    return got


def count(queue: Any, expected: int, timeout: float = WAIT) -> int:
    """The queue's ready count, polled until it is ``expected`` or the deadline passes (then whatever it
    is, so a wrong count still shows in the comparison)."""
    deadline = time.monotonic() + timeout
    while True:
        found = (queue.queue_declare(passive=True)).message_count
        if found == expected or time.monotonic() >= deadline:
            return int(found)
        sleep(0.02)


def drain_until(conn: Any, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Dispatch deliveries on ``conn`` until ``predicate()`` holds; False if the deadline passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            conn.drain_events(timeout=min(remaining, 0.2))
        except TimeoutError:
            pass
    return True


def raw(body: Any) -> Any:
    """The body as bytes: py-amqp hands Kombu a str when content_encoding is a text encoding, kelp always
    bytes (docs/migrating-from-kombu.md); the content is compared."""
    return body.encode("utf-8") if isinstance(body, str) else body
