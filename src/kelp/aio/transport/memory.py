"""``memory://``: the in-process transport, with RabbitMQ's semantics (also the test broker users get).

``memory://`` and ``memory://name`` name process-wide brokers; connections to the same name share
exchanges, queues and messages, from any thread and from both the sync and the asyncio API. Nothing
survives the process: every message is transient here, whatever its delivery mode. Unacked messages return
to their queue, flagged ``redelivered``, when their channel or connection closes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kelp._broker.memory import MemoryBroker, broker_for
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.aio._backend import Signal, monotonic
from kelp.aio.transport.base import (
    DEFAULT_IMPLEMENTS,
    Implements,
    Transport,
    TransportChannel,
    kelp_version,
    queue_deleted,
)
from kelp.exceptions import OperationalError

__all__ = ["MemoryChannel", "MemoryTransport"]


class MemoryChannel(TransportChannel):
    def __init__(self, transport: MemoryTransport, broker: MemoryBroker, connection_id: int) -> None:
        self._transport = transport
        self._broker = broker
        self._connection_id = connection_id
        self.channel_id = broker.open_channel(connection_id)

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
        self._broker.declare_exchange(name, type, durable, auto_delete, internal, arguments, passive)

    async def delete_exchange(self, name: str, if_unused: bool) -> None:
        self._broker.delete_exchange(name, if_unused)

    async def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        return self._broker.declare_queue(
            self._connection_id, name, durable, exclusive, auto_delete, arguments, passive
        )

    async def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        return self._broker.delete_queue(self._connection_id, name, if_unused, if_empty)

    async def purge_queue(self, name: str) -> int:
        return self._broker.purge_queue(self._connection_id, name)

    async def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        self._broker.bind(self._connection_id, kind, destination, source, routing_key, arguments)

    async def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        self._broker.unbind(self._connection_id, kind, destination, source, routing_key, arguments)

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return self._broker.publish(envelopes)

    async def qos(self, prefetch_count: int, global_: bool) -> None:
        self._broker.qos(self._connection_id, self.channel_id, prefetch_count, global_)

    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        return self._broker.consume(self._connection_id, self.channel_id, queue, consumer_tag, no_ack)

    async def cancel(self, consumer_tag: str) -> None:
        self._broker.cancel(self._connection_id, self.channel_id, consumer_tag)

    async def get(self, queue: str, no_ack: bool) -> Delivery | None:
        return self._broker.get(self._connection_id, self.channel_id, queue, no_ack)

    async def ack(self, delivery_tag: int, multiple: bool) -> None:
        self._broker.ack(self._connection_id, self.channel_id, delivery_tag, multiple)

    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        self._broker.reject(self._connection_id, self.channel_id, delivery_tag, requeue, multiple)

    async def recover(self, requeue: bool) -> None:
        self._broker.recover(self._connection_id, self.channel_id, requeue)

    async def close(self) -> None:
        self._broker.close_channel(self._connection_id, self.channel_id)

    async def cancel_delayed(self, message_id: str) -> int:
        return self._broker.store.cancel_delayed(message_id)


class MemoryTransport(Transport):
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(delayed_delivery=True)
    query_options: ClassVar[frozenset[str] | None] = frozenset()

    driver_type: ClassVar[str] = "memory"
    driver_name: ClassVar[str] = "memory"

    def driver_version(self) -> str:
        return kelp_version()

    def __init__(self, url: Any, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._broker: MemoryBroker | None = None
        self._connection_id = 0
        self._signal = Signal()

    @property
    def is_connected(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise OperationalError("the memory:// connection is closed")
        return self._broker

    async def connect(self, timeout: float | None) -> None:
        if self._broker is None:
            broker = broker_for(self.url.hostname or "")
            self._connection_id = broker.connect(self._signal)
            self._broker = broker

    async def close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.disconnect(self._connection_id)

    async def open_channel(self) -> MemoryChannel:
        return MemoryChannel(self, self.broker, self._connection_id)

    async def drain(self, timeout: float | None) -> list[Delivery]:
        broker = self.broker
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            cancelled = broker.take_cancelled(self._connection_id)
            if cancelled is not None:
                raise queue_deleted(*cancelled)
            deliveries = broker.claim(self._connection_id)
            if deliveries:
                return deliveries
            self._signal.clear()
            wait = broker.prepare_wait(self._connection_id)
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0 and wait != 0.0:
                raise TimeoutError("no message arrived within the timeout")
            if wait is None or (remaining is not None and remaining < wait):
                wait = remaining
            if wait is None or wait > 0:
                await self._signal.wait(wait)
            if self._broker is None:
                raise OperationalError("the memory:// connection was closed while draining")

    async def queue_stats(self) -> list[tuple[str, int, int, int]]:
        return self.broker.queue_stats()

    async def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return self.broker.bindings()
