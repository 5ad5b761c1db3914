"""Where producers and consumers send their commands, and declaring an entity once per connection: a
producer or consumer built on a connection uses its default channel (opened again after a reconnect);
``maybe_declare`` remembers durable entities per connection so a message's exchange or queue is declared
before the first publish or consume, not before every one."""

from __future__ import annotations

from typing import Any

from kelp.aio.connection import Channel, Connection
from kelp.entity import Exchange, Queue
from kelp.exceptions import UsageError


class _Source:
    """A channel, or a connection whose default channel is used (resolved lazily)."""

    def __init__(self, channel: Channel | Connection) -> None:
        self._connection: Connection | None = channel if isinstance(channel, Connection) else None
        self._channel: Channel | None = channel if isinstance(channel, Channel) else None

    @property
    def connection(self) -> Connection:
        if self._connection is not None:
            return self._connection
        assert self._channel is not None
        return self._channel.connection

    async def get(self) -> Channel:
        channel = self._channel
        if channel is not None:
            if channel.is_open:
                return channel
            if self._connection is None:
                raise UsageError(f"{channel!r} is closed")
        return await self.connection.ensure_default_channel()

    def revive(self, channel: Channel | Connection) -> None:
        if isinstance(channel, Connection):
            self._connection, self._channel = channel, None
        else:
            self._channel = channel


async def maybe_declare(
    entity: Exchange | Queue,
    channel: Channel | Connection | None = None,
    retry: bool = False,
    **retry_policy: Any,
) -> bool:
    """Declare ``entity`` unless this connection already did; return True if it declared now.

    Only durable, non-auto-delete entities are remembered (others may vanish, so they are declared
    every time). The memory is per connection and is forgotten on reconnect.
    """
    if channel is None:
        channel = entity.channel
    if isinstance(channel, Connection):
        channel = await channel.ensure_default_channel()
    connection = channel.connection
    key = entity if entity.can_cache_declaration else None
    if key is not None and key in connection.declared_entities:
        return False
    if retry:
        await connection.ensure(entity, _declare, **retry_policy)(entity, channel)
    else:
        await _declare(entity, channel)
    if key is not None:
        connection.declared_entities.add(key)
    return True


async def _declare(entity: Exchange | Queue, channel: Channel) -> None:
    if isinstance(entity, Queue):
        await channel.declare_queue(entity, passive=entity.passive)
    else:
        await channel.declare_exchange(entity, passive=entity.passive)
