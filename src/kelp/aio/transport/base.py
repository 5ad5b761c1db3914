"""The transport interface: the one narrow seam between kelp's library layer and a broker.

A :class:`Transport` is one connection to a broker; it opens :class:`TransportChannel` objects. Every
operation maps to an AMQP 0-9-1 method, so RabbitMQ implements it natively and the transports kelp brokers
itself (memory, SQLite, Redis) implement it with the semantics RabbitMQ has. Transports raise only kelp's
exceptions (:mod:`kelp.exceptions`): they map their native failures at this boundary.

Delivery is by draining: :meth:`Transport.drain` returns the deliveries that arrived for the connection's
consumers, waiting up to ``timeout`` seconds, and raises ``socket.timeout`` when none came. Unacked
deliveries belong to their channel: closing the channel or the connection (or the process dying, for
transports that detect it) returns them to their queues, flagged ``redelivered``.
"""

from __future__ import annotations

import abc
import importlib.metadata
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kelp._envelope import PROPERTY_NAMES, Delivery, Envelope, QueueInfo, QueueStats
from kelp.exceptions import ChannelError, ConsumerCancelled, InvalidURL, OperationalError, UsageError
from kelp.routing import EXCHANGE_TYPES
from kelp.url import URL

# The plain data that crosses this interface is public here, for transports and hosts outside kelp.
__all__ = [
    "PROPERTY_NAMES",
    "Delivery",
    "Envelope",
    "QueueInfo",
    "QueueStats",
    "Transport",
    "TransportChannel",
    "queue_deleted",
]


def queue_deleted(channel_id: int, consumer_tag: str, queue: str) -> ConsumerCancelled:
    """What ``drain`` raises for a consumer cancelled because its queue was deleted."""
    return ConsumerCancelled(
        f"queue '{queue}' was deleted: consumer {consumer_tag} cancelled", consumer_tag, channel_id
    )


class TransportChannel(abc.ABC):
    """A channel: a lightweight session on a transport connection with its own deliveries and acks."""

    channel_id: int

    @abc.abstractmethod
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
        """Create the exchange, or check that it exists (``passive``) or matches (PreconditionFailed)."""

    @abc.abstractmethod
    async def delete_exchange(self, name: str, if_unused: bool) -> None: ...

    @abc.abstractmethod
    async def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        """Create the queue (an empty name gets a generated one) or check it; return its counts."""

    @abc.abstractmethod
    async def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        """Delete the queue and its ready messages; return how many messages it held."""

    @abc.abstractmethod
    async def purge_queue(self, name: str) -> int:
        """Drop every ready message (not the unacked ones); return how many."""

    @abc.abstractmethod
    async def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        """Bind a queue (``kind='queue'``) or an exchange (``kind='exchange'``) to the ``source`` exchange."""

    @abc.abstractmethod
    async def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None: ...

    @abc.abstractmethod
    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Route and store a batch, under the delivery model (docs/transports.md):

        - A *persistent* message (``delivery_mode`` 2, the default) has left the process when this
          returns: written to the socket (amqp, redis, postgresql) or committed to the file (sqlite), so
          a publisher killed right after loses nothing. A *transient* one may be buffered in the process,
          to be sent within milliseconds, before any other operation of the connection, and at close.
        - Confirms are pipelined: without ``confirm_publish`` this does not wait for the broker's answer;
          the envelope joins the connection's outbox (see :meth:`Transport.unconfirmed`) until the broker
          confirms it. The outbox is bounded by count and bytes: a publish that would overflow it waits
          for confirms first (back-pressure). A refusal found later is raised by the connection's next
          publish, :meth:`Transport.flush` or :meth:`Transport.close`, as MessageNacked naming it.
        - With ``confirm_publish`` (and always for a ``mandatory`` message, whose return must reach its
          producer) it returns once the broker holds every message of the batch.

        Returns the mandatory envelopes that no queue took. Raises MessageNacked when the broker refused a
        message of this batch (a full queue with ``reject-publish``, a negative confirm) or of an earlier
        pipelined one.

        An envelope with a ``due`` time is delayed: routed now, and made ready in each queue no earlier
        than ``due`` (wall clock), in due-time then publish order; its TTL starts at ``due``. Only a
        transport whose ``implements.delayed_delivery`` is true receives one (the library refuses the
        publish otherwise); it must never deliver such a message early.
        """

    @abc.abstractmethod
    async def qos(self, prefetch_count: int, global_: bool) -> None:
        """Limit unacked deliveries per consumer (or per channel when ``global_``); 0 is unlimited."""

    @abc.abstractmethod
    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        """Start a consumer (an empty tag gets a generated one); return its tag."""

    @abc.abstractmethod
    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; its unacked deliveries stay unacked until settled or the channel closes."""

    @abc.abstractmethod
    async def get(self, queue: str, no_ack: bool) -> Delivery | None:
        """Take one message from the queue, or None when it has none ready."""

    @abc.abstractmethod
    async def ack(self, delivery_tag: int, multiple: bool) -> None: ...

    @abc.abstractmethod
    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        """Requeue (flagged redelivered) or drop / dead-letter the delivery."""

    @abc.abstractmethod
    async def recover(self, requeue: bool) -> None:
        """Redeliver every unacked delivery of this channel."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the channel; its unacked deliveries return to their queues, flagged redelivered."""

    async def cancel_delayed(self, message_id: str) -> int:
        """Drop the delayed message ``message_id`` from every queue still holding it (not yet due);
        return how many copies were dropped. Transports that cannot find a held message refuse."""
        raise UsageError(f"{type(self).__name__} cannot cancel delayed messages")


class Implements(dict[str, Any]):
    """What a transport supports, readable as attributes (Kombu's ``transport.implements``):
    ``exchange_type`` (the exchange types it routes), ``heartbeats``, ``asynchronous``, ``batch_publish``,
    ``delayed_delivery`` (it holds messages published with a due time)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def extend(self, **changes: Any) -> Implements:
        return Implements(self, **changes)


def package_version(name: str) -> str:
    """The installed version of the distribution ``name`` ('N/A' when it is not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "N/A"


def kelp_version() -> str:
    return package_version("kelp")


#: What every kelp transport supports unless it says otherwise.
DEFAULT_IMPLEMENTS = Implements(
    asynchronous=True,
    batch_publish=True,
    exchange_type=EXCHANGE_TYPES,  # kelp routes these itself (kelp.routing.MATCHERS)
    heartbeats=False,
    delayed_delivery=False,
)


class Transport(abc.ABC):
    """One connection to a broker."""

    #: URL schemes this transport serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Errors after which reconnecting may help (retried by ``Connection.ensure``).
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (OperationalError, OSError)
    #: Errors the broker raised for one operation on a channel.
    channel_errors: ClassVar[tuple[type[BaseException], ...]] = (ChannelError,)
    #: True when the broker routes (RabbitMQ); False when kelp routes at publish time.
    native_routing: ClassVar[bool] = False
    #: The URL query options this transport reads; any other raises InvalidURL rather than being ignored
    #: (None: the transport checks its query itself).
    query_options: ClassVar[frozenset[str] | None] = None

    #: The kind of broker (Kombu's ``driver_type``: ``'amqp'``, ``'redis'``...) and the client library.
    driver_type: ClassVar[str] = "N/A"
    driver_name: ClassVar[str] = "N/A"
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        known = self.query_options
        if known is not None and not known.issuperset(url.query):
            unknown = ", ".join(sorted(set(url.query) - known))
            listed = ", ".join(sorted(known)) or "none"
            raise InvalidURL(f"{url.transport}:// has no URL option {unknown} (its options: {listed})")
        self.url = url
        self.options = dict(options)
        #: The Connection this transport belongs to.
        self.client: Any = None

    def driver_version(self) -> str:
        """The version of the library that talks to the broker."""
        return "N/A"

    def qos_semantics_matches_spec(self, connection: Any) -> bool:
        """Whether ``prefetch_count`` without ``global`` limits a channel (AMQP 0-9-1) rather than each
        consumer. kelp's brokers limit each consumer, as RabbitMQ 3.3 and later do."""
        return False

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @abc.abstractmethod
    async def connect(self, timeout: float | None) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every channel and the connection; unacked deliveries return to their queues."""

    @abc.abstractmethod
    async def open_channel(self) -> TransportChannel: ...

    @abc.abstractmethod
    async def drain(self, timeout: float | None) -> list[Delivery]:
        """Wait up to ``timeout`` seconds (None: forever) for deliveries; raise ``socket.timeout`` if none.

        Raises :class:`~kelp.exceptions.ConsumerCancelled` (once per consumer) when the broker cancelled
        one of this connection's consumers because its queue was deleted; the transport has already
        forgotten that consumer."""

    async def flush(self, timeout: float | None) -> None:
        """The barrier: send whatever is buffered and wait until the broker has confirmed every earlier
        publish of this connection. Raises MessageNacked for the messages it refused (each refusal is
        reported once), ``socket.timeout`` when ``timeout`` seconds pass first (nothing is lost: the
        messages stay in the outbox), and a connection error when the connection is gone (the outbox
        is then :meth:`unconfirmed`). Transports that confirm every publish before it returns have
        nothing to wait for."""
        return None

    def unconfirmed(self) -> list[Envelope]:
        """The outbox: envelopes whose publish returned but that the broker has not confirmed, in
        publish order. After the connection is lost, the library publishes them again on the next
        connection (at-least-once: a message the broker took before the loss arrives twice)."""
        return []

    def info(self) -> dict[str, Any]:
        return {"transport": self.url.transport, "url": self.url.as_uri()}

    async def queue_stats(self) -> list[tuple[str, int, int, int]]:
        """``(queue, ready, unacked, consumers)`` for every queue the transport can see (for the CLI), each
        a :class:`QueueStats` that also carries ``delayed`` (messages held until their due time)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list queues")

    async def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """``(source, kind, destination, routing_key, arguments)`` for every binding."""
        raise NotImplementedError(f"{type(self).__name__} cannot list bindings")
