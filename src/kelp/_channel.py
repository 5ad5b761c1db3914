# Generated from src/kelp/aio/_channel.py by scripts/unasync.py; do not edit.
"""A channel on a connection: AMQP's methods on top of the transport interface.

Deliveries the connection drains are turned into :class:`Message` objects here and handed to the callbacks
the consumers registered on the channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from kelp._backend import maybe_await
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.entity import Exchange, Queue
from kelp.exceptions import UsageError
from kelp.message import Message
from kelp.transport.base import TransportChannel

if TYPE_CHECKING:
    from kelp.connection import Connection

logger = logging.getLogger("kelp.connection")

Callback = Callable[[Message], Any]


class Channel:
    """A channel on a connection: AMQP's methods, deliveries turned into messages for callbacks."""

    def __init__(self, connection: Connection, transport_channel: TransportChannel) -> None:
        self.connection = connection
        self.transport_channel = transport_channel
        self.channel_id = transport_channel.channel_id
        self.is_open = True
        self._callbacks: dict[str, Callback] = {}
        self._no_ack: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"<Channel {self.channel_id} of {self.connection!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- exchanges ------------------------------------------------------------------------------------

    def exchange_declare(
        self,
        exchange: str = "",
        type: str = "direct",
        durable: bool = True,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        passive: bool = False,
        internal: bool = False,
    ) -> None:
        self.transport_channel.declare_exchange(
            exchange, type, durable, auto_delete, internal, arguments, passive
        )

    def exchange_delete(self, exchange: str = "", if_unused: bool = False, nowait: bool = False) -> None:
        self.transport_channel.delete_exchange(exchange, if_unused)

    def exchange_bind(
        self,
        destination: str = "",
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.transport_channel.bind("exchange", destination, source, routing_key, arguments)

    def exchange_unbind(
        self,
        destination: str = "",
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.transport_channel.unbind("exchange", destination, source, routing_key, arguments)

    # --- queues ------------------------------------------------------------------------------------------

    def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = True,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
    ) -> QueueInfo:
        return self.transport_channel.declare_queue(
            queue, durable, exclusive, auto_delete, arguments, passive
        )

    def queue_bind(
        self,
        queue: str = "",
        exchange: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.transport_channel.bind("queue", queue, exchange, routing_key, arguments)

    def queue_unbind(
        self,
        queue: str = "",
        exchange: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.transport_channel.unbind("queue", queue, exchange, routing_key, arguments)

    def queue_purge(self, queue: str = "", nowait: bool = False) -> int:
        return self.transport_channel.purge_queue(queue)

    def queue_delete(
        self, queue: str = "", if_unused: bool = False, if_empty: bool = False, nowait: bool = False
    ) -> int:
        return self.transport_channel.delete_queue(queue, if_unused, if_empty)

    # --- entities (what Exchange/Queue forward to) -------------------------------------------------

    def declare_exchange(self, exchange: Exchange, passive: bool = False) -> None:
        """Declare the exchange; nothing for the default exchange or one made with ``no_declare``."""
        if not exchange.name or exchange.no_declare:
            return
        self.exchange_declare(
            exchange.name,
            exchange.type,
            exchange.durable,
            exchange.auto_delete,
            exchange.arguments,
            passive=passive,
            internal=exchange.internal,
        )

    def queue_declare_entity(self, queue: Queue, passive: bool = False) -> QueueInfo:
        info = self.queue_declare(
            queue.name,
            passive=passive,
            durable=queue.durable,
            exclusive=queue.exclusive,
            auto_delete=queue.auto_delete,
            arguments=queue.arguments,
        )
        if not queue.name:
            queue.name = info.queue
        if queue.on_declared is not None:
            maybe_await(queue.on_declared(*info))
        return info

    def bind_queue_entity(self, queue: Queue) -> None:
        for edge in queue.all_bindings:
            exchange = edge.exchange.name if edge.exchange is not None else ""
            self.queue_bind(queue.name, exchange, edge.routing_key, arguments=edge.arguments)

    def declare_queue(self, queue: Queue, passive: bool = False) -> str:
        """Declare the queue's exchanges, the queue and its bindings; return the (generated) name.

        A queue made with ``no_declare`` is never declared (it must exist): nothing is sent."""
        if queue.no_declare:
            return queue.name
        if not passive:
            for edge in queue.all_bindings:
                if edge.exchange is not None and edge.exchange.name and not edge.exchange.no_declare:
                    self.declare_exchange(edge.exchange)
        self.queue_declare_entity(queue, passive=passive)
        if not passive:
            self.bind_queue_entity(queue)
        return queue.name

    def get_message(
        self, queue: str, no_ack: bool = False, accept: Collection[str] | None = None
    ) -> Message | None:
        delivery = self.transport_channel.get(queue, no_ack)
        if delivery is None:
            return None
        return Message(self, delivery, accept=accept, no_ack=no_ack)

    # --- basic ----------------------------------------------------------------------------------------

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0, a_global: bool = False) -> None:
        """Limit unacked deliveries: per consumer started after this call (or per channel if global).

        ``prefetch_count`` is 0 (no limit) to 65535, as AMQP carries it; anything else raises UsageError."""
        if type(prefetch_count) is not int or not 0 <= prefetch_count <= 0xFFFF:
            raise UsageError(f"prefetch_count must be an integer from 0 to 65535, not {prefetch_count!r}")
        self.transport_channel.qos(prefetch_count, a_global)

    def basic_consume(
        self,
        queue: str = "",
        consumer_tag: str = "",
        no_ack: bool = False,
        exclusive: bool = False,
        callback: Callback | None = None,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        on_cancel: Any = None,
    ) -> str:
        """Start delivering ``queue``'s messages to ``callback(message)`` as ``drain_events`` runs."""
        tag = self.transport_channel.consume(queue, consumer_tag, no_ack, arguments)
        self._callbacks[tag] = callback if callback is not None else _no_callback
        self._no_ack[tag] = no_ack
        return tag

    def basic_cancel(self, consumer_tag: str, nowait: bool = False) -> None:
        self._callbacks.pop(consumer_tag, None)
        self._no_ack.pop(consumer_tag, None)
        if self.is_open:
            self.transport_channel.cancel(consumer_tag)

    def basic_get(
        self, queue: str = "", no_ack: bool = False, accept: Collection[str] | None = None
    ) -> Message | None:
        return self.get_message(queue, no_ack, accept)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.transport_channel.ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.transport_channel.reject(delivery_tag, requeue)

    def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.transport_channel.reject(delivery_tag, requeue, multiple)

    def basic_recover(self, requeue: bool = True) -> None:
        self.transport_channel.recover(requeue)

    def prepare_message(
        self,
        body: bytes | str,
        priority: int | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Envelope:
        """An envelope for :meth:`basic_publish` from an already-encoded body."""
        return Envelope.from_encoded(body, priority, content_type, content_encoding, headers, properties)

    def basic_publish(
        self,
        message: Envelope,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
    ) -> list[Envelope]:
        """Publish one prepared message; return it in a list if it was mandatory and unroutable."""
        message.exchange = exchange
        message.routing_key = routing_key
        message.mandatory = mandatory
        return self.transport_channel.publish((message,))

    def publish_batch(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Publish many addressed envelopes in one call (one round trip / transaction where possible)."""
        return self.transport_channel.publish(envelopes)

    # --- deliveries ---------------------------------------------------------------------------------

    def dispatch(self, delivery: Delivery) -> None:
        callback = self._callbacks.get(delivery.consumer_tag)
        if callback is None:
            # The consumer was cancelled after this delivery was claimed: give the message back.
            if not self._no_ack.get(delivery.consumer_tag, False) and self.is_open:
                self.transport_channel.reject(delivery.delivery_tag, True)
            return
        message = Message(self, delivery, no_ack=self._no_ack.get(delivery.consumer_tag, False))
        maybe_await(callback(message))

    def close(self) -> None:
        """Close the channel: its consumers stop and its unacked messages return to their queues."""
        if not self.is_open:
            return
        self.is_open = False
        self._callbacks.clear()
        self.connection._forget_channel(self)
        self.transport_channel.close()


def _no_callback(message: Message) -> None:
    logger.warning("message %r arrived for a consumer without a callback; it stays unacked", message)
