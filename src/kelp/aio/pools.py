"""Pools of connections, channels and producers, and the process-wide registries of pools.

A pool hands out at most ``limit`` resources at a time and takes them back for reuse:

    async with await pool.acquire(block=True) as conn:
        ...  # leaving the block releases conn to the pool (still connected, for the next user)

``acquire`` raises :class:`~kelp.exceptions.ConnectionLimitExceeded` (or ``ChannelLimitExceeded``) when
all are in use, unless ``block`` is true: then it waits for a release, up to ``timeout`` seconds. With no
limit, every acquire makes a new resource and release closes it. The sync pools are thread-safe; the
asyncio pools are safe for the tasks of one event loop.

``connections[conn]`` and ``producers[conn]`` are the registries Kombu programs use: one pool per broker
address (connections with equal settings share it), of :func:`get_limit` resources each.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Generic, TypeVar, cast

from kelp import exceptions
from kelp.aio import messaging
from kelp.aio._resource import Resource
from kelp.aio.connection import Channel, Connection

__all__ = [
    "ChannelPool",
    "ConnectionPool",
    "PoolGroup",
    "PooledChannel",
    "PooledConnection",
    "PooledProducer",
    "ProducerPool",
    "Resource",
    "connections",
    "get_limit",
    "producers",
    "register_group",
    "reset",
    "set_limit",
]

logger = logging.getLogger("kelp.pools")

T = TypeVar("T")


def _adopt(resource: Any, cls: type[T], pool: Resource[Any]) -> T:
    """Re-class a resource made by its usual factory as the pooled kind, so that only ``release`` and
    ``with``-exit change meaning (the connection keeps tracking its channel as before)."""
    resource.__class__ = cls
    resource._pool = pool
    return cast(T, resource)


class PooledConnection(Connection):
    """A connection from a :class:`ConnectionPool`: ``release()`` and leaving ``with`` give it back (still
    connected); ``close()`` closes it. Entering ``with`` connects it if needed."""

    _pool: Resource[Any] | None = None

    async def release(self) -> None:
        if self._pool is None:
            await self.close()
        else:
            await self._pool.release(self)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class PooledChannel(Channel):
    """A channel from a :class:`ChannelPool`: ``release()`` and leaving ``with`` give it back."""

    _pool: Resource[Any] | None = None

    async def release(self) -> None:
        if self._pool is None:
            await self.close()
        else:
            await self._pool.release(self)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class PooledProducer(messaging.Producer):
    """A producer from a :class:`ProducerPool`: it holds a pooled connection while acquired;
    ``release()`` and leaving ``with`` give both back."""

    _pool: Resource[Any] | None = None
    _pooled_connection: PooledConnection | None = None

    async def release(self) -> None:
        if self._pool is None:
            await self.close()
        else:
            await self._pool.release(self)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class ConnectionPool(Resource[PooledConnection]):
    """Connections to the broker of ``connection`` (clones of it). Acquired connections are not
    connected yet the first time; they connect when entered (``with``) or first used."""

    LimitExceeded: ClassVar[type[exceptions.LimitExceeded]] = exceptions.ConnectionLimitExceeded

    def __init__(
        self, connection: Connection, limit: int | None = None, preload: int | None = None, **kwargs: Any
    ) -> None:
        self.connection = connection
        super().__init__(limit=limit, preload=preload)

    async def new(self) -> PooledConnection:
        return _adopt(self.connection.clone(), PooledConnection, self)

    async def close_resource(self, resource: PooledConnection) -> None:
        await resource.close()

    @asynccontextmanager
    async def acquire_channel(self, block: bool = False) -> AsyncIterator[tuple[Connection, Channel]]:
        """Acquire a connection and yield it with its default channel; release it on exit."""
        async with await self.acquire(block=block) as connection:
            yield connection, await connection.ensure_default_channel()


class ChannelPool(Resource[PooledChannel]):
    """Channels on ``connection`` (connected on first need). A released channel keeps its consumers and
    settings: cancel what you started before releasing it. A closed channel is not reused."""

    LimitExceeded: ClassVar[type[exceptions.LimitExceeded]] = exceptions.ChannelLimitExceeded

    def __init__(
        self, connection: Connection, limit: int | None = None, preload: int | None = None, **kwargs: Any
    ) -> None:
        self.connection = connection
        super().__init__(limit=limit, preload=preload)

    async def new(self) -> PooledChannel:
        return _adopt(await self.connection.channel(), PooledChannel, self)

    async def recycle(self, resource: PooledChannel) -> bool:
        return resource.is_open and resource.connection.connected

    async def close_resource(self, resource: PooledChannel) -> None:
        await resource.close()


_pooled_producer_classes: dict[type[messaging.Producer], type[PooledProducer]] = {}


def _pooled_producer_class(cls: type[messaging.Producer]) -> type[PooledProducer]:
    if issubclass(cls, PooledProducer):
        return cls
    pooled = _pooled_producer_classes.get(cls)
    if pooled is None:
        pooled = cast(type[PooledProducer], type(f"Pooled{cls.__name__}", (PooledProducer, cls), {}))
        _pooled_producer_classes[cls] = pooled
    return pooled


class ProducerPool(Resource[PooledProducer]):
    """Producers, each holding a connection from ``connections`` while it is acquired (acquiring one may
    wait for a free connection). ``Producer`` is the producer class to make (default :class:`Producer`)."""

    Producer: type[messaging.Producer] = messaging.Producer

    def __init__(
        self,
        connections: ConnectionPool,
        Producer: type[messaging.Producer] | None = None,
        limit: int | None = None,
        preload: int | None = None,
    ) -> None:
        self.connections = connections
        if Producer is not None:
            self.Producer = Producer
        super().__init__(limit=limit, preload=preload)

    async def _connection(self) -> PooledConnection:
        return await self.connections.acquire(block=True)

    async def new(self) -> PooledProducer:
        connection = await self._connection()
        try:
            producer = _pooled_producer_class(self.Producer)(connection)
        except BaseException:
            await connection.release()
            raise
        producer._pool = self
        producer._pooled_connection = connection
        return producer

    async def create_producer(self) -> PooledProducer:
        """A new producer holding a connection from ``connections`` (Kombu's name for :meth:`new`)."""
        return await self.new()

    async def prepare(self, p: PooledProducer) -> PooledProducer:
        if p._pooled_connection is None:
            connection = await self._connection()
            p.revive(connection)
            p._pooled_connection = connection
        return p

    async def recycle(self, resource: PooledProducer) -> bool:
        connection, resource._pooled_connection = resource._pooled_connection, None
        if connection is not None:
            await connection.release()
        return True

    async def close_resource(self, resource: PooledProducer) -> None:
        await self.recycle(resource)


# --- registries -----------------------------------------------------------------------------------------

_limit = [10]
_groups: list[PoolGroup[Any]] = []

P = TypeVar("P", bound=Resource[Any])


def _connection_key(connection: Connection) -> Hashable:
    """Connections with the same addresses and options share a pool (Kombu's "equal connections")."""
    urls = tuple(url.as_uri(include_password=True) for url in connection.urls)
    return urls, repr(sorted(connection.transport_options.items()))


class PoolGroup(Generic[P]):
    """A registry of pools, one per broker address: ``group[connection]`` returns (making it on first
    use) the pool for connections equal to ``connection``. ``limit`` None uses :func:`get_limit`."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._pools: dict[Hashable, P] = {}
        self._lock = threading.Lock()  # never held across I/O: the same lock serves both faces

    def create(self, resource: Connection, limit: int) -> P:
        raise NotImplementedError("PoolGroups must define create()")

    def __getitem__(self, connection: Connection) -> P:
        key = _connection_key(connection)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                limit = get_limit() if self.limit is None else self.limit
                pool = self._pools[key] = self.create(connection, limit)
            return pool

    def __contains__(self, connection: object) -> bool:
        return isinstance(connection, Connection) and _connection_key(connection) in self._pools

    def __len__(self) -> int:
        return len(self._pools)

    def values(self) -> list[P]:
        with self._lock:
            return list(self._pools.values())

    def clear(self) -> None:
        with self._lock:
            self._pools.clear()


G = TypeVar("G", bound=PoolGroup[Any])


def register_group(group: G) -> G:
    """Have :func:`reset` and :func:`set_limit` manage this group's pools too."""
    _groups.append(group)
    return group


class Connections(PoolGroup[ConnectionPool]):
    """``connections[conn]``: the connection pool for ``conn``'s broker."""

    def create(self, resource: Connection, limit: int) -> ConnectionPool:
        return ConnectionPool(resource, limit=limit)


class Producers(PoolGroup[ProducerPool]):
    """``producers[conn]``: a producer pool drawing on ``connections[conn]``."""

    def create(self, resource: Connection, limit: int) -> ProducerPool:
        return ProducerPool(connections[resource], limit=limit)


connections = register_group(Connections())
producers = register_group(Producers())


def get_limit() -> int:
    """The size of the pools the registries make (10 unless :func:`set_limit` changed it)."""
    return _limit[0]


async def set_limit(
    limit: int, force: bool = False, reset_after: bool = False, ignore_errors: bool = False
) -> int:
    """Set the registries' pool size, resizing every pool they hold (see :meth:`Resource.resize`)."""
    if isinstance(limit, bool):
        raise TypeError("limit must be an int, not bool")
    limit = limit or 0
    if limit != _limit[0]:
        for group in _groups:
            for pool in group.values():
                await pool.resize(limit, force=force, ignore_errors=ignore_errors, reset=reset_after)
        _limit[0] = limit
    return limit


async def reset(*args: Any, **kwargs: Any) -> None:
    """Close every resource of every registered pool (also those in use) and forget the pools."""
    for group in _groups:
        for pool in group.values():
            try:
                await pool.force_close_all()
            except Exception:
                logger.debug("error closing %r", pool, exc_info=True)
        group.clear()
