"""The pool mechanism under every pool of :mod:`kelp.pools`: at most ``limit`` resources handed out at a
time, taken back for reuse, waited for (``block``) or refused (``LimitExceeded``) when all are in use."""

from __future__ import annotations

import logging
from typing import ClassVar, Generic, TypeVar

from kelp import exceptions
from kelp.aio._backend import Condition, monotonic
from kelp.exceptions import UsageError

__all__ = ["Resource"]

logger = logging.getLogger("kelp.pools")

R = TypeVar("R")


class Resource(Generic[R]):
    """A pool of at most ``limit`` resources (0 or None: no limit, no reuse).

    Subclasses define :meth:`new` and may override :meth:`prepare` (on each acquire),
    :meth:`recycle` (on each release; False means "do not reuse") and :meth:`close_resource`.
    ``preload`` resources are made when the pool is first used, so later acquires find them ready.
    """

    LimitExceeded: ClassVar[type[exceptions.LimitExceeded]] = exceptions.LimitExceeded

    def __init__(self, limit: int | None = None, preload: int | None = None) -> None:
        if isinstance(limit, bool):
            raise TypeError("limit must be an int, not bool")
        self._limit = limit or 0
        self.preload = preload or 0
        self._to_preload = min(self.preload, self._limit)
        self._idle: list[R] = []  # free resources, most recently released last (reused first)
        self._in_use: set[R] = set()
        self._reserved = 0  # slots held by resources being made or being recycled
        self._closed = False
        self._cond = Condition()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} limit={self._limit} in_use={len(self._in_use)} idle={len(self._idle)}>"
        )

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int | None) -> None:
        """Assign a new limit, as Kombu allows (Celery sets it before first use). Idle resources past it
        are closed as they are released; acquirers already waiting are not woken: use :meth:`resize` on
        a pool in use."""
        if isinstance(limit, bool) or not isinstance(limit, int | None):
            raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
        self._limit = limit or 0
        self._to_preload = min(self.preload, self._limit)

    def _total(self) -> int:
        return len(self._in_use) + len(self._idle) + self._reserved

    # --- for subclasses -------------------------------------------------------------------------------

    async def new(self) -> R:
        raise NotImplementedError("subclass responsibility")

    async def prepare(self, resource: R) -> R:
        """Make a resource ready to hand out (called on every acquire)."""
        return resource

    async def recycle(self, resource: R) -> bool:
        """Reset a released resource; return False if it must be closed rather than reused."""
        return True

    async def close_resource(self, resource: R) -> None:
        """Close a resource for good."""

    # --- acquiring and releasing ----------------------------------------------------------------------

    async def acquire(self, block: bool = False, timeout: float | None = None) -> R:
        """Take a free resource, or make one while under the limit.

        When ``limit`` resources are in use: raise :attr:`LimitExceeded` at once unless ``block``, else
        wait for a release, up to ``timeout`` seconds (None: forever), then raise it. Release the
        resource with ``release()`` on it (or by leaving its ``with`` block), exactly once.
        """
        if self._closed:
            raise UsageError(f"acquire on a closed pool: {self!r}")
        await self._preload()
        deadline = None if timeout is None else monotonic() + timeout
        resource: R | None = None
        async with self._cond:
            while True:
                if self._closed:
                    raise UsageError(f"acquire on a closed pool: {self!r}")
                if self._idle:
                    resource = self._idle.pop()
                    self._in_use.add(resource)
                    break
                if not self._limit or self._total() < self._limit:
                    self._reserved += 1
                    break
                remaining = None if deadline is None else deadline - monotonic()
                if not block or (remaining is not None and remaining <= 0):
                    raise self.LimitExceeded(f"all {self._limit} resources of {self!r} are in use")
                await self._cond.wait(remaining)
        if resource is None:
            resource = await self._make_reserved()
            async with self._cond:
                self._in_use.add(resource)
        try:
            return await self.prepare(resource)
        except BaseException:
            await self.release(resource)
            raise

    async def _make_reserved(self) -> R:
        try:
            resource = await self.new()
        except BaseException:
            async with self._cond:
                self._reserved -= 1
                self._cond.notify()
            raise
        async with self._cond:
            self._reserved -= 1
        return resource

    async def _preload(self) -> None:
        if not self._to_preload:
            return
        async with self._cond:
            count, self._to_preload = self._to_preload, 0
            self._reserved += count
        made: list[R] = []
        try:
            for _ in range(count):
                made.append(await self.new())
        finally:
            async with self._cond:
                self._reserved -= count
                self._idle.extend(made)
                self._cond.notify(len(made))

    async def release(self, resource: R) -> None:
        """Give a resource back: it is reset (:meth:`recycle`) and kept for reuse, or closed when the pool
        has no limit, is closed, or the resource is broken. Releasing twice is ignored."""
        async with self._cond:
            if resource not in self._in_use:
                return
            self._in_use.discard(resource)
            self._reserved += 1
        try:
            reusable = await self.recycle(resource)
        except Exception:
            logger.debug("could not recycle %r", resource, exc_info=True)
            reusable = False
        async with self._cond:
            self._reserved -= 1
            keep = reusable and bool(self._limit) and not self._closed and self._total() < self._limit
            if keep:
                self._idle.append(resource)
            self._cond.notify()
        if not keep:
            await self._close_quietly(resource)

    async def replace(self, resource: R) -> None:
        """Close a defective resource instead of releasing it; its slot becomes free."""
        async with self._cond:
            self._in_use.discard(resource)
            self._cond.notify()
        await self._close_quietly(resource)

    async def _close_quietly(self, resource: R) -> None:
        try:
            await self.close_resource(resource)
        except Exception:
            logger.debug("error closing %r", resource, exc_info=True)

    async def force_close_all(self, close_pool: bool = True) -> None:
        """Close every resource, the free ones and those in use; unless ``close_pool`` is false, the pool
        then refuses to acquire. Resources in use are closed under their users, whose later release is
        ignored; their unacked messages return to their queues."""
        async with self._cond:
            if self._closed:
                return
            self._closed = close_pool
            resources = [*self._idle, *self._in_use]
            self._idle.clear()
            self._in_use.clear()
            self._cond.notify_all()
        for resource in resources:
            await self._close_quietly(resource)

    async def resize(
        self, limit: int | None, force: bool = False, ignore_errors: bool = False, reset: bool = False
    ) -> None:
        """Change the limit. Shrinking below the number in use raises UsageError unless ``force``
        (which, like ``reset``, closes every resource) or ``ignore_errors``."""
        if isinstance(limit, bool):
            raise TypeError("limit must be an int, not bool")
        new_limit = limit or 0
        async with self._cond:
            if 0 < new_limit < len(self._in_use) and not ignore_errors:
                if not force:
                    raise UsageError(
                        f"can't shrink {self!r} to {new_limit} while {len(self._in_use)} resources are in use"
                    )
                reset = True
            self._limit = new_limit
            excess: list[R] = []
            while self._idle and (not new_limit or self._total() > new_limit):
                excess.append(self._idle.pop(0))
            self._cond.notify_all()
        for resource in excess:
            await self._close_quietly(resource)
        if reset:
            await self.force_close_all(close_pool=False)
