"""The blocking primitives the sync API runs on (hand-written twin of ``kelp/aio/_backend.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Condition", "Lock", "Signal", "maybe_await", "monotonic", "run_blocking", "sleep"]

T = TypeVar("T")

monotonic = time.monotonic
sleep = time.sleep
Lock = threading.Lock
#: ``with cond``, ``cond.wait(timeout) -> bool``, ``notify``: what ``kelp.aio._backend.Condition`` mirrors.
Condition = threading.Condition


class Signal:
    """A wake-up flag that any thread may raise and one thread waits on."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None) -> bool:
        """Wait until set or ``timeout`` seconds pass; return whether it was set."""
        return self._event.wait(timeout)


def maybe_await(value: Any) -> Any:
    """The sync twin of ``kelp.aio._backend.maybe_await``: values are already results."""
    return value


def run_blocking(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking call; in the sync API that is simply calling it."""
    return function(*args)
