"""The channel of every broker kelp runs itself (memory, sqlite, postgres): each AMQP method is the broker
core's session method of the same name (``kelp._broker.core.session``), for this connection and channel.

Nothing happens to messages here that the session does not do: declarations, routing and storage go to the
store, deliveries and acks to the session's unacked bookkeeping. A transport whose store may block (disk,
network, another process's lock) sets ``blocking``, and the asyncio face then calls the session from a
worker thread; the sync face calls it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from kelp._broker.core.session import Session
from kelp._broker.core.store import Store
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.aio._backend import run_blocking
from kelp.aio.transport.base import TransportChannel

__all__ = ["SessionChannel"]

T = TypeVar("T")


class SessionChannel(TransportChannel):
    """A channel over a broker-core session (see the module docstring)."""

    #: Whether the session's calls may block (then the asyncio face runs them in a worker thread).
    blocking: ClassVar[bool] = True

    def __init__(self, session: Session[Any], connection_id: int) -> None:
        self._session = session
        self._connection_id = connection_id
        self.channel_id = session.open_channel(connection_id)

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self.blocking:
            return await run_blocking(function, *args)
        return function(*args)

    async def declare_exchange(
        self,
        name: str,
        type: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> None:
        session = self._session
        await self._call(
            session.declare_exchange, name, type, durable, auto_delete, internal, arguments, passive
        )

    async def delete_exchange(self, name: str, if_unused: bool) -> None:
        await self._call(self._session.delete_exchange, name, if_unused)

    async def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        return await self._call(
            self._session.declare_queue,
            self._connection_id,
            name,
            durable,
            exclusive,
            auto_delete,
            arguments,
            passive,
        )

    async def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        return await self._call(self._session.delete_queue, self._connection_id, name, if_unused, if_empty)

    async def purge_queue(self, name: str) -> int:
        return await self._call(self._session.purge_queue, self._connection_id, name)

    async def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        await self._call(
            self._session.bind, self._connection_id, kind, destination, source, routing_key, arguments
        )

    async def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        session = self._session
        await self._call(
            session.unbind, self._connection_id, kind, destination, source, routing_key, arguments
        )

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return await self._call(self._session.publish, envelopes)

    async def qos(self, prefetch_count: int, global_: bool) -> None:
        # Bookkeeping in this process only: never blocks.
        self._session.qos(self._connection_id, self.channel_id, prefetch_count, global_)

    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        return await self._call(
            self._session.consume, self._connection_id, self.channel_id, queue, consumer_tag, no_ack
        )

    async def cancel(self, consumer_tag: str) -> None:
        await self._call(self._session.cancel, self._connection_id, self.channel_id, consumer_tag)

    async def get(self, queue: str, no_ack: bool) -> Delivery | None:
        return await self._call(self._session.get, self._connection_id, self.channel_id, queue, no_ack)

    async def ack(self, delivery_tag: int, multiple: bool) -> None:
        await self._call(self._session.ack, self._connection_id, self.channel_id, delivery_tag, multiple)

    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        await self._call(
            self._session.reject, self._connection_id, self.channel_id, delivery_tag, requeue, multiple
        )

    async def recover(self, requeue: bool) -> None:
        await self._call(self._session.recover, self._connection_id, self.channel_id, requeue)

    async def close(self) -> None:
        await self._call(self._session.close_channel, self._connection_id, self.channel_id)

    async def cancel_delayed(self, message_id: str) -> int:
        store: Store = self._session.store
        return await self._call(store.cancel_delayed, message_id)
