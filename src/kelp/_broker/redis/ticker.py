"""The heartbeat loop of a ``redis://`` connection: an asyncio task (kelp.aio) or a daemon thread (kelp).

The transport source (``kelp/aio/transport/redis.py``) imports :class:`AsyncTicker` as ``Ticker``; its
generated sync twin imports :class:`ThreadTicker` under the same name. Both call ``tick()`` every
``interval`` seconds until stopped, log and survive a failing tick, and run beside the application: the
thread keeps beating while a sync callback works for minutes; the task does as long as the event loop is
not blocked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

__all__ = ["AsyncTicker", "ThreadTicker"]

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
