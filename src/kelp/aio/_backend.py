"""The asyncio primitives the library is written against (hand-written twin of ``kelp/_backend.py``).

``scripts/unasync.py`` turns every ``kelp.aio`` module into its sync twin by dropping ``await``; the few
places where waiting truly differs go through the names below, which both backends define alike.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Condition", "Lock", "Signal", "maybe_await", "monotonic", "run_blocking", "sleep"]

T = TypeVar("T")

monotonic = time.monotonic
Lock = asyncio.Lock


class Signal:
    """A wake-up flag that any thread may raise and one task awaits.

    Brokers run in-process (``memory://``) set it from whichever thread published; the waiting task is
    woken through its own event loop, so a sync producer thread can feed an asyncio consumer.
    """

    def __init__(self) -> None:
        self._flag = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def set(self) -> None:
        self._flag = True
        loop, event = self._loop, self._event
        if loop is None or event is None:
            return
        if threading.get_ident() == self._thread:
            event.set()
        else:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the waiting loop is closed: nobody to wake
                pass

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        if self._event is not None:
            self._event.clear()

    async def wait(self, timeout: float | None) -> bool:
        """Wait until set or ``timeout`` seconds pass; return whether it was set."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            self._event = asyncio.Event()
            self._thread = threading.get_ident()
            self._loop = loop
        if self.is_set():  # set between the first check and the event's creation
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return self._flag
        return True


class Condition:
    """A condition variable for tasks of one event loop: ``async with cond``, ``await cond.wait(timeout)``.

    Unlike :class:`asyncio.Condition`, ``wait`` takes a timeout and returns whether it was notified, as
    :class:`threading.Condition` does. The underlying condition is re-created when used from another event
    loop, so a module-level object (a pool registry) survives ``asyncio.run`` being called again.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._cond = asyncio.Condition()
            self._loop = loop
        return self._cond

    async def __aenter__(self) -> Condition:
        await self._current().acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._cond.release()

    async def wait(self, timeout: float | None = None) -> bool:
        """Release the lock until notified or ``timeout`` seconds pass; return whether notified."""
        try:
            async with asyncio.timeout(timeout):
                await self._cond.wait()
        except TimeoutError:
            return False
        return True

    def notify(self, n: int = 1) -> None:
        self._cond.notify(n)

    def notify_all(self) -> None:
        self._cond.notify_all()


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if it is awaitable: callbacks given to ``kelp.aio`` may be plain or ``async def``."""
    if inspect.isawaitable(value):
        return await value
    return value


async def run_blocking(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (a SQLite statement, a DNS lookup) off the event loop."""
    return await asyncio.to_thread(function, *args)
