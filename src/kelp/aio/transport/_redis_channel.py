"""A redis:// channel: its consumers, prefetch windows and unacked deliveries live in the process, in the
broker core's :class:`~kelp._broker.core.channel.ChannelState` (each unacked delivery's ref says where its
entry sits in Redis: ``(stream suffix, entry id)``); every declaration, claim and settlement is one call of
the broker script on the connection's pipe. Acks are buffered on the connection and sent in batches;
rejects, requeues and a closing channel put messages back at the head of their queue, flagged
redelivered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kelp._broker.core.channel import ChannelState, Consumer
from kelp._broker.core.store import Unacked
from kelp._broker.malformed import Malformed
from kelp._broker.queue_args import QueueArgs, check_name, generated_queue_name
from kelp._broker.redis.codec import binding_member, decode_meta, encode_arguments
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.aio.transport._redis_common import ACK_BATCH, _flag, _text
from kelp.aio.transport.base import TransportChannel
from kelp.exceptions import AccessRefused, UsageError
from kelp.routing import validate_exchange_type

if TYPE_CHECKING:
    from kelp.aio.transport.redis import RedisTransport

__all__ = ["RedisChannel"]


class RedisChannel(TransportChannel):
    """A channel: its consumers, prefetch windows and unacked deliveries live here, in the process."""

    def __init__(self, transport: RedisTransport, channel_id: int) -> None:
        self._transport = transport
        self.channel_id = channel_id
        self.state = ChannelState(channel_id)

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
        if not name:
            return  # the default exchange always exists
        if passive:
            await self._transport.call("xdecl", name, "", "", "", "", "", "", "1")
            self._transport.exchanges.add(name)
            return
        check_name("exchange", name, passive)
        validate_exchange_type(type)
        alternate = (arguments or {}).get("alternate-exchange")
        await self._transport.call(
            "xdecl",
            name,
            type,
            _flag(durable),
            _flag(auto_delete),
            _flag(internal),
            encode_arguments(arguments),
            alternate if isinstance(alternate, str) else "",
            "0",
        )
        self._transport.exchanges.add(name)

    async def delete_exchange(self, name: str, if_unused: bool) -> None:
        if not name or name.startswith("amq."):
            raise AccessRefused(f"operation not permitted on the default or 'amq.*' exchange '{name}'")
        self._transport.exchanges.discard(name)
        await self._transport.call("xdel", name, _flag(if_unused))

    async def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        transport = self._transport
        if passive:
            result = await transport.call("qdecl", transport.connection_id, name, "", "", "", "", "1")
            return QueueInfo(name, int(result[1]), int(result[2]))
        if name:
            check_name("queue", name, passive)
        args = QueueArgs.parse(arguments)
        name = name or generated_queue_name()

        def optional(value: int | None) -> str:
            return "" if value is None else str(value)

        result = await transport.call(
            "qdecl",
            transport.connection_id,
            name,
            _flag(durable),
            _flag(exclusive),
            _flag(auto_delete),
            encode_arguments(arguments),
            "0",
            optional(args.message_ttl),
            optional(args.expires),
            optional(args.max_length),
            optional(args.max_length_bytes),
            args.overflow,
            str(args.max_priority or 0),
            _flag(args.dead_letter_exchange is not None),
            args.dead_letter_exchange or "",
            _flag(args.dead_letter_routing_key is not None),
            args.dead_letter_routing_key or "",
        )
        return QueueInfo(name, int(result[1]), int(result[2]))

    async def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        transport = self._transport
        return int(
            await transport.call("qdel", transport.connection_id, name, _flag(if_unused), _flag(if_empty))
        )

    async def purge_queue(self, name: str) -> int:
        return int(await self._transport.call("purge", self._transport.connection_id, name))

    async def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        member, rule_error = self._member(kind, destination, source, routing_key, arguments)
        await self._transport.call(
            "bind", self._transport.connection_id, kind, destination, source, routing_key, member, rule_error
        )

    async def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        member, _ = self._member(kind, destination, source, routing_key, arguments)
        await self._transport.call(
            "unbind", self._transport.connection_id, kind, destination, source, routing_key, member
        )

    @staticmethod
    def _member(
        kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> tuple[str, str]:
        if not source:
            raise AccessRefused("operation not permitted on the default exchange")
        if kind not in ("queue", "exchange"):
            raise UsageError(f"a binding destination is a 'queue' or an 'exchange', not {kind!r}")
        return binding_member(kind, destination, routing_key, arguments)

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return await self._transport.publish(envelopes)

    async def qos(self, prefetch_count: int, global_: bool) -> None:
        self.state.qos(prefetch_count, global_)
        self._transport.wake()

    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        consumer_tag = self.state.free_tag(consumer_tag)
        await self._transport.call("consume", self._transport.connection_id, queue, self._key(consumer_tag))
        self.state.add_consumer(consumer_tag, queue, no_ack)
        self._transport.wake()
        return consumer_tag

    async def cancel(self, consumer_tag: str) -> None:
        consumer = self.state.consumers.pop(consumer_tag, None)
        if consumer is not None and self._transport.is_connected:  # a released connection has no consumers
            await self._transport.call("cancel", self._transport.connection_id, self._key(consumer_tag))

    def _key(self, consumer_tag: str) -> str:
        """The consumer's name in its queue's consumer table."""
        return f"{self.channel_id}:{consumer_tag}"

    async def get(self, queue: str, no_ack: bool) -> Delivery | None:
        transport = self._transport
        result = await transport.call("get", transport.connection_id, queue, _flag(no_ack))
        if result[0]:
            await transport.flush_outbox()
        while len(result) >= 7:
            _, ready, suffix, entry_id, body, meta, deliveries = result
            delivery = self._deliver(
                None, queue, _text(suffix), entry_id, body, meta, deliveries, no_ack, int(ready)
            )
            if delivery is not None:
                return delivery
            # A malformed entry: it leaves the queue, and the next message is taken.
            await transport.quarantine()
            result = await transport.call("get", transport.connection_id, queue, _flag(no_ack))
            if result[0]:
                await transport.flush_outbox()
        return None

    def _deliver(
        self,
        consumer: Consumer | None,
        queue: str,
        suffix: str,
        entry_id: bytes,
        body: bytes,
        meta: bytes,
        deliveries: int,
        no_ack: bool,
        message_count: int | None = None,
    ) -> Delivery | None:
        """The delivery of a claimed entry, or None for a malformed one (kept for transport.quarantine)."""
        try:
            properties, headers, exchange, routing_key = decode_meta(meta)
        except Malformed as exc:
            self._transport.malformed.append((queue, suffix, entry_id, no_ack, str(exc)))
            return None
        delivery_tag = self.state.record(consumer, queue, ((suffix, entry_id),), no_ack)
        return Delivery(
            self.channel_id,
            consumer.tag if consumer is not None else "",
            delivery_tag,
            body,
            properties,
            headers,
            exchange,
            routing_key,
            int(deliveries) > 0,
            message_count,
        )

    async def ack(self, delivery_tag: int, multiple: bool) -> None:
        transport = self._transport
        for item in self.state.settle(delivery_tag, multiple):
            suffix, entry_id = item.ref
            transport.queue_ack(item.queue, suffix, entry_id)
        transport.wake()
        if transport.pending_acks >= ACK_BATCH:
            await transport.send_buffered()

    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        await self._settle_remote(self.state.settle(delivery_tag, multiple), requeue)

    async def recover(self, requeue: bool) -> None:
        """Requeue every unacked delivery of the channel (AMQP basic.recover; kelp always requeues)."""
        await self._settle_remote(self.state.drop_all(), True)

    async def _settle_remote(self, items: list[Unacked], requeue: bool) -> None:
        if not items:
            return
        args: list[Any] = []
        for item in items:
            args += (item.queue, *item.ref)
        transport = self._transport
        outbox = await transport.call("settle", transport.connection_id, _flag(requeue), len(items), *args)
        transport.wake()
        if outbox:
            await transport.flush_outbox()

    async def cancel_delayed(self, message_id: str) -> int:
        # Sent after this connection's earlier publishes on the same pipe, so it finds them.
        return int(await self._transport.call("dcancel", message_id))

    async def close(self) -> None:
        transport = self._transport
        if transport.forget_channel(self) and transport.is_connected:
            for consumer_tag in list(self.state.consumers):
                await self.cancel(consumer_tag)
            await self._settle_remote(self.state.drop_all(), True)
