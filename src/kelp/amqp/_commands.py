"""The AMQP command vocabulary: one method per client request, each a thin call into the state machine.

Kept apart from :mod:`._connection` so that module holds only state handling.  Beyond a few argument checks,
each method delegates to :meth:`Connection._request`, which checks the connection and channel state against
the tables in :mod:`._state`, encodes the method from :mod:`._spec` and records the reply it must wait for.
"""

from __future__ import annotations

from typing import Any

from ._errors import LocalProtocolError
from ._fields import FieldTable

__all__ = ["Commands"]


class Commands:
    """Mixin of :class:`Connection`: requests that need no special bookkeeping."""

    __slots__ = ()

    def _request(self, channel: int, name: str, args: tuple[Any, ...], nowait: bool = False) -> bytes:
        raise NotImplementedError

    def channel_flow(self, channel: int, active: bool) -> bytes:
        """Ask the server to pause (``False``) or resume deliveries; :class:`FlowOk` follows."""
        return self._request(channel, "channel.flow", (active,))

    def exchange_declare(
        self,
        channel: int,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """``exchange.declare``; :class:`ExchangeDeclareOk` follows unless ``nowait``."""
        args = (0, exchange, type, passive, durable, auto_delete, internal, nowait, arguments)
        return self._request(channel, "exchange.declare", args, nowait)

    def exchange_delete(
        self, channel: int, exchange: str, *, if_unused: bool = False, nowait: bool = False
    ) -> bytes:
        """``exchange.delete``; :class:`ExchangeDeleteOk` follows unless ``nowait``."""
        return self._request(channel, "exchange.delete", (0, exchange, if_unused, nowait), nowait)

    def exchange_bind(
        self,
        channel: int,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """Bind exchange ``destination`` to ``source``; :class:`ExchangeBindOk` follows unless ``nowait``."""
        args = (0, destination, source, routing_key, nowait, arguments)
        return self._request(channel, "exchange.bind", args, nowait)

    def exchange_unbind(
        self,
        channel: int,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """Remove an exchange-to-exchange binding; :class:`ExchangeUnbindOk` follows unless ``nowait``."""
        args = (0, destination, source, routing_key, nowait, arguments)
        return self._request(channel, "exchange.unbind", args, nowait)

    def queue_declare(
        self,
        channel: int,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """``queue.declare`` (empty name: broker-named); :class:`QueueDeclareOk` follows unless ``nowait``."""
        if nowait and not queue:
            raise LocalProtocolError(
                "queue_declare with nowait needs a queue name: the generated one is lost"
            )
        args = (0, queue, passive, durable, exclusive, auto_delete, nowait, arguments)
        return self._request(channel, "queue.declare", args, nowait)

    def queue_bind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """``queue.bind``; :class:`QueueBindOk` follows unless ``nowait``."""
        return self._request(
            channel, "queue.bind", (0, queue, exchange, routing_key, nowait, arguments), nowait
        )

    def queue_unbind(
        self,
        channel: int,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """``queue.unbind`` (always synchronous); :class:`QueueUnbindOk` follows."""
        return self._request(channel, "queue.unbind", (0, queue, exchange, routing_key, arguments))

    def queue_purge(self, channel: int, queue: str, *, nowait: bool = False) -> bytes:
        """Drop the queue's ready (not unacked) messages; :class:`QueuePurgeOk` follows unless ``nowait``."""
        return self._request(channel, "queue.purge", (0, queue, nowait), nowait)

    def queue_delete(
        self,
        channel: int,
        queue: str,
        *,
        if_unused: bool = False,
        if_empty: bool = False,
        nowait: bool = False,
    ) -> bytes:
        """Delete a queue and its messages; :class:`QueueDeleteOk` follows unless ``nowait``."""
        return self._request(channel, "queue.delete", (0, queue, if_unused, if_empty, nowait), nowait)

    def basic_qos(
        self, channel: int, prefetch_count: int = 0, *, prefetch_size: int = 0, global_qos: bool = False
    ) -> bytes:
        """Cap unacked deliveries (0 = no cap), per consumer unless ``global_qos``; :class:`QosOk` follows."""
        return self._request(channel, "basic.qos", (prefetch_size, prefetch_count, global_qos))

    def basic_consume(
        self,
        channel: int,
        queue: str,
        consumer_tag: str = "",
        *,
        no_local: bool = False,
        no_ack: bool = False,
        exclusive: bool = False,
        nowait: bool = False,
        arguments: FieldTable | None = None,
    ) -> bytes:
        """Start a consumer; :class:`ConsumeOk` (with the tag) follows unless ``nowait``.

        With ``no_ack`` the broker forgets each message as it sends it: a crash loses what was in flight.
        """
        if nowait and not consumer_tag:
            raise LocalProtocolError(
                "basic_consume with nowait needs a consumer tag: the generated one is lost"
            )
        args = (0, queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments)
        return self._request(channel, "basic.consume", args, nowait)

    def basic_cancel(self, channel: int, consumer_tag: str, *, nowait: bool = False) -> bytes:
        """Stop a consumer; :class:`CancelOk` follows unless ``nowait``.  Unacked deliveries stay unacked."""
        return self._request(channel, "basic.cancel", (consumer_tag, nowait), nowait)

    def basic_get(self, channel: int, queue: str, *, no_ack: bool = False) -> bytes:
        """Fetch one message: :class:`GetOk` or :class:`GetEmpty` follows."""
        return self._request(channel, "basic.get", (0, queue, no_ack))

    def basic_reject(self, channel: int, delivery_tag: int, requeue: bool = True) -> bytes:
        """Reject one delivery; ``requeue=False`` drops it or dead-letters it if the queue has a DLX."""
        return self._request(channel, "basic.reject", (delivery_tag, requeue))

    def basic_nack(
        self, channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> bytes:
        """Reject one or (with ``multiple``) several deliveries; RabbitMQ extension."""
        return self._request(channel, "basic.nack", (delivery_tag, multiple, requeue))

    def basic_recover(self, channel: int, requeue: bool = True) -> bytes:
        """Redeliver this channel's unacked messages; :class:`RecoverOk` follows."""
        return self._request(channel, "basic.recover", (requeue,))

    def tx_select(self, channel: int) -> bytes:
        return self._request(channel, "tx.select", ())

    def tx_commit(self, channel: int) -> bytes:
        return self._request(channel, "tx.commit", ())

    def tx_rollback(self, channel: int) -> bytes:
        return self._request(channel, "tx.rollback", ())
