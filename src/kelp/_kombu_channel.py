"""For ``kelp.kombu``: a kelp delivery as a Kombu message, and a kelp channel behind Kombu's channel methods
(declare, bind, publish, consume, settle). What happens to messages is the kelp engine's: a delivery not
acked returns to its queue when its channel closes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kombu.message import Message as _KombuMessage
from kombu.transport import base as _kombu_base

from kelp.exceptions import ChannelError, OperationalError, UsageError
from kelp.transport.base import Delivery, Envelope, QueueInfo, TransportChannel

if TYPE_CHECKING:
    from kelp.kombu import Transport

__all__ = ["Channel", "Message"]

logger = logging.getLogger("kelp.kombu")


class Message(_KombuMessage):
    """A kelp delivery as a Kombu message: ``ack``/``reject``/``requeue`` settle it on its kelp channel."""

    def __init__(self, delivery: Delivery, channel: Channel) -> None:
        properties = dict(delivery.properties)
        super().__init__(  # type: ignore[no-untyped-call]
            body=delivery.body,
            delivery_tag=delivery.delivery_tag,
            content_type=properties.get("content_type"),
            content_encoding=properties.get("content_encoding"),
            delivery_info={
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "consumer_tag": delivery.consumer_tag,
                "delivery_tag": delivery.delivery_tag,
                "redelivered": delivery.redelivered,
                "priority": properties.get("priority"),
            },
            properties=properties,
            headers=dict(delivery.headers),
            channel=channel,
        )


class Channel(_kombu_base.StdChannel):
    """One kelp channel seen through Kombu's channel methods (``queue_declare``, ``basic_publish``...)."""

    def __init__(self, transport: Transport, kelp_channel: TransportChannel) -> None:
        #: Kombu reaches its Connection as ``channel.connection.client``.
        self.connection = transport
        self.kelp_channel = kelp_channel
        self.channel_id = kelp_channel.channel_id
        self.is_open = True
        self.no_ack_consumers: set[str] = set()  # type: ignore[assignment]
        self.events: dict[str, set[Callable[..., Any]]] = {"basic_return": set()}
        self._callbacks: dict[str, Callable[[Any], Any]] = {}
        # The latest cancelled no_ack consumers: deliveries still on their way to them need no settling.
        self._cancelled_no_ack: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"<kelp.kombu.Channel {self.channel_id}>"

    # --- exchanges, queues, bindings --------------------------------------------------------------

    def exchange_declare(
        self,
        exchange: str = "",
        type: str = "direct",
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = True,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        internal: bool = False,
    ) -> None:
        self.kelp_channel.declare_exchange(exchange, type, durable, auto_delete, internal, arguments, passive)

    def exchange_delete(self, exchange: str = "", if_unused: bool = False, nowait: bool = False) -> None:
        self.kelp_channel.delete_exchange(exchange, if_unused)

    def exchange_bind(
        self,
        destination: str,
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.kelp_channel.bind("exchange", destination, source, routing_key, arguments)

    def exchange_unbind(
        self,
        destination: str,
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.kelp_channel.unbind("exchange", destination, source, routing_key, arguments)

    def prepare_queue_arguments(self, arguments: Mapping[str, Any] | None, **kwargs: Any) -> dict[str, Any]:
        """Kombu's queue shortcuts (``expires``, ``message_ttl``, ``max_length``...) as ``x-*`` arguments,
        which kelp's engines act on."""
        prepared: dict[str, Any] = _kombu_base.to_rabbitmq_queue_arguments(arguments, **kwargs)
        return prepared

    def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = True,
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueInfo:
        """Create the queue or check it. Declaring again, with the same options, a (not exclusive) queue
        that a connection of this process to the same broker consumes from is answered here, without a
        broker round trip (Celery's client declares its reply queue before every task, on the connection
        next to the one consuming it): the queue exists, since its deletion would have cancelled that
        consumer. That answer carries the counts of the last declaration that reached the broker."""
        shape = (durable, exclusive, auto_delete, dict(arguments or {}))
        cacheable = bool(queue) and not passive and not exclusive
        known = self.connection.known_queues
        if cacheable:
            info = known.lookup(queue, shape)
            if info is not None:
                return info
        info = self.kelp_channel.declare_queue(queue, durable, exclusive, auto_delete, arguments, passive)
        if cacheable:
            known.declared(info.queue, shape, info)
        return info

    def queue_bind(
        self,
        queue: str,
        exchange: str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
    ) -> None:
        self.kelp_channel.bind("queue", queue, exchange, routing_key, arguments)

    def queue_unbind(
        self,
        queue: str,
        exchange: str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
    ) -> None:
        self.kelp_channel.unbind("queue", queue, exchange, routing_key, arguments)

    def queue_purge(self, queue: str = "", nowait: bool = False) -> int:
        """Drop the queue's ready messages (not the unacked ones); return how many."""
        return self.kelp_channel.purge_queue(queue)

    def queue_delete(
        self, queue: str = "", if_unused: bool = False, if_empty: bool = False, nowait: bool = False
    ) -> int:
        self.connection.known_queues.deleted(queue)
        return self.kelp_channel.delete_queue(queue, if_unused, if_empty)

    # --- publishing --------------------------------------------------------------------------------

    def prepare_message(
        self,
        body: bytes | str,
        priority: int | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Envelope:
        """An envelope from Kombu's already-serialized body. Properties outside AMQP's basic set are not
        carried (as on Kombu's AMQP transport): put extra data in ``headers``."""
        return Envelope.from_encoded(body, priority, content_type, content_encoding, headers, properties)

    def basic_publish(
        self,
        message: Envelope,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
        **kwargs: Any,
    ) -> None:
        """Route and store the message under kelp's delivery model: a persistent message has left the
        process when this returns; with ``confirm_publish`` the broker holds it. A mandatory message no
        queue took goes to the ``basic_return`` handlers, or raises when there are none."""
        message.exchange = exchange
        message.routing_key = routing_key
        message.mandatory = mandatory
        returned = self.kelp_channel.publish((message,))
        for envelope in returned:
            error = ChannelError(f"message to {exchange!r}/{routing_key!r} was unroutable")
            if not self.events["basic_return"]:
                raise error
            for handler in self.events["basic_return"]:
                handler(error, exchange, routing_key, envelope)

    # --- consuming ---------------------------------------------------------------------------------

    def basic_qos(self, prefetch_size: int = 0, prefetch_count: int = 0, a_global: bool = False) -> None:
        """Limit unacked deliveries per consumer, or per channel when ``a_global``; takes effect at once."""
        self.kelp_channel.qos(prefetch_count, a_global)

    def basic_consume(
        self,
        queue: str = "",
        consumer_tag: str = "",
        no_ack: bool = False,
        exclusive: bool = False,
        callback: Callable[[Any], Any] | None = None,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        on_cancel: Callable[..., Any] | None = None,
    ) -> str:
        """Start a consumer; ``drain_events`` hands its deliveries to ``callback``."""
        tag = self.kelp_channel.consume(queue, consumer_tag or "", no_ack, arguments)
        if callback is not None:
            self._callbacks[tag] = callback
        if no_ack:
            self.no_ack_consumers.add(tag)
        self.connection.known_queues.consuming(self.connection, self.channel_id, tag, queue)
        return tag

    def basic_cancel(self, consumer_tag: str, nowait: bool = False) -> None:
        """Stop the consumer; its unacked deliveries stay unacked until settled or the channel closes."""
        self._callbacks.pop(consumer_tag, None)
        if consumer_tag in self.no_ack_consumers:
            self.no_ack_consumers.discard(consumer_tag)
            self._cancelled_no_ack[consumer_tag] = None
            if len(self._cancelled_no_ack) > 256:  # pidbox makes a consumer per broadcast
                del self._cancelled_no_ack[next(iter(self._cancelled_no_ack))]
        self.connection.known_queues.cancelled(self.connection, self.channel_id, consumer_tag)
        if self.is_open:
            self.kelp_channel.cancel(consumer_tag)

    def basic_get(self, queue: str = "", no_ack: bool = False, **kwargs: Any) -> Delivery | None:
        """Take one ready message (Kombu turns it into a Message with :meth:`message_to_python`)."""
        return self.kelp_channel.get(queue, no_ack)

    def message_to_python(self, raw: Delivery | Message) -> Message:
        return raw if isinstance(raw, Message) else Message(raw, self)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.kelp_channel.ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        """Requeue (flagged redelivered) or drop / dead-letter the delivery."""
        self.kelp_channel.reject(delivery_tag, requeue)

    def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.kelp_channel.reject(delivery_tag, requeue, multiple)

    def basic_recover(self, requeue: bool = True) -> None:
        """Redeliver every unacked delivery of this channel."""
        self.kelp_channel.recover(requeue)

    def flow(self, active: bool) -> None:
        raise UsageError("kelp.kombu does not implement channel.flow; use basic_qos or cancel consumers")

    def dispatch(self, delivery: Delivery) -> None:
        callback = self._callbacks.get(delivery.consumer_tag)
        if callback is None:
            # Cancelled after the engine handed this delivery over: give it back rather than hold it.
            tag = delivery.consumer_tag
            if tag not in self.no_ack_consumers and tag not in self._cancelled_no_ack and self.is_open:
                self.kelp_channel.reject(delivery.delivery_tag, True)
            return
        callback(delivery)

    def close(self) -> None:
        """Close the channel: its consumers stop and its unacked messages return to their queues."""
        if not self.is_open:
            return
        self.is_open = False
        for tag in self._callbacks:
            self.connection.known_queues.cancelled(self.connection, self.channel_id, tag)
        self._callbacks.clear()
        self.connection.forget_channel(self)
        try:
            self.kelp_channel.close()
        except OperationalError:
            logger.debug("closing a channel of a lost connection", exc_info=True)
