"""The timers of a ``redis://`` connection: an asyncio task (kelp.aio) or a daemon thread (kelp).

The transport source (``kelp/aio/transport/redis.py``) imports :class:`AsyncTicker` as ``Ticker`` and
:class:`AsyncLinger` as ``Linger``; its generated sync twin imports :class:`ThreadTicker` and
:class:`ThreadLinger` under the same names.

A ticker calls ``tick()`` every ``interval`` seconds until stopped (the heartbeat), logs and survives a
failing tick, and runs beside the application: the thread keeps beating while a sync callback works for
minutes; the task does as long as the event loop is not blocked.

A linger calls ``flush()`` once, ``delay`` seconds after ``arm()`` (the first publish of an empty buffer);
arming an armed linger does nothing. It is how buffered publishes reach Redis when the publisher pauses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

__all__ = ["AsyncLinger", "AsyncTicker", "ThreadLinger", "ThreadTicker"]

logger = logging.getLogger("kelp.transport.redis")


class AsyncTicker:
    def __init__(self, interval: float, tick: Callable[[], Awaitable[object]], name: str) -> None:
        self._interval = interval
        self._tick = tick
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("%s: heartbeat failed", self._name, exc_info=True)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        self._stopping = True
        task.cancel()
        try:
            # Bounded: a tick that swallowed the cancellation still ends at the loop's next check.
            await asyncio.wait({task}, timeout=self._interval + 5)
        except RuntimeError:  # the task belongs to a loop that is gone
            pass


class ThreadTicker:
    def __init__(self, interval: float, tick: Callable[[], object], name: str) -> None:
        self._interval = interval
        self._tick = tick
        self._name = name
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._tick()
            except Exception:
                logger.warning("%s: heartbeat failed", self._name, exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)


class AsyncLinger:
    def __init__(self, delay: float, flush: Callable[[], Awaitable[object]], name: str) -> None:
        self._delay = delay
        self._flush = flush
        self._name = name
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def arm(self) -> None:
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        try:
            await self._flush()
        except Exception:
            logger.warning("%s: flushing buffered publishes failed", self._name, exc_info=True)

    async def stop(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        task, self._task = self._task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await asyncio.wait({task}, timeout=10)


class ThreadLinger:
    def __init__(self, delay: float, flush: Callable[[], object], name: str) -> None:
        self._delay = delay
        self._flush = flush
        self._name = name
        self._armed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        if self._thread is None:  # started on the first publish: a pure consumer never has the thread
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._armed.set()

    def _run(self) -> None:
        while True:
            self._armed.wait()
            if self._stopping.is_set():
                return
            time.sleep(self._delay)
            self._armed.clear()
            if self._stopping.is_set():  # stop() set the flag before the event: a clear never hides it
                return
            try:
                self._flush()
            except Exception:
                logger.warning("%s: flushing buffered publishes failed", self._name, exc_info=True)

    def stop(self) -> None:
        self._stopping.set()
        self._armed.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
