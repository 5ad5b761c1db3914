"""Connections and channels: the library's handle on a broker.

``Connection(url)`` picks a transport from the URL's scheme (a fixed table: a URL never makes kelp import
an arbitrary module), connects, opens channels and drains deliveries to consumers. ``;``-separated URLs (or a
list) are failover alternatives tried in turn by :meth:`Connection.ensure_connection`.

A :class:`Channel` carries AMQP's methods under their usual names (``queue_declare``, ``basic_publish``,
``basic_ack``...) on top of the transport interface, and turns deliveries into :class:`Message` objects for
the consumer callbacks registered on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.aio._backend import maybe_await, monotonic, sleep
from kelp.aio.message import Message
from kelp.aio.transport.base import Transport, TransportChannel
from kelp.entity import Exchange, Queue
from kelp.exceptions import (
    ConsumerCancelled,
    MessageNacked,
    OperationalError,
    UnsupportedTransport,
    UsageError,
)
from kelp.url import URL, parse_failover

if TYPE_CHECKING:
    from kelp.aio.messaging import Consumer, Producer
    from kelp.aio.pools import ChannelPool, ConnectionPool
    from kelp.aio.simple import SimpleBuffer, SimpleQueue

__all__ = ["DEFAULT_URL", "TRANSPORTS", "Channel", "Connection", "resolve_transport"]

logger = logging.getLogger("kelp.connection")
#: Messages published again after a reconnect per confirmed slice (see ``_republish_outbox``).
_REPUBLISH_SLICE = 100


def default_sqlite_path() -> str:
    """The database file of :data:`DEFAULT_URL`: ``$KELP_HOME/kelp.db`` if ``KELP_HOME`` is set, else
    ``$XDG_DATA_HOME/kelp/kelp.db``, else ``~/.local/share/kelp/kelp.db`` (its directory is created on
    first connect)."""
    home = os.environ.get("KELP_HOME")
    if home:
        return os.path.join(os.path.abspath(os.path.expanduser(home)), "kelp.db")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data), "kelp", "kelp.db")


#: Used when no URL is given and ``KELP_URL`` is unset: the embedded SQLite broker's default file.
DEFAULT_URL = "sqlite:///" + quote(default_sqlite_path(), safe="/")

#: URL scheme -> (module, class). The only transports a URL can select.
TRANSPORTS: Mapping[str, tuple[str, str]] = {
    "memory": ("kelp.aio.transport.memory", "MemoryTransport"),
    "sqlite": ("kelp.aio.transport.sqlite", "SqliteTransport"),
    "amqp": ("kelp.aio.transport.amqp", "AmqpTransport"),
    "amqps": ("kelp.aio.transport.amqp", "AmqpTransport"),
    "redis": ("kelp.aio.transport.redis", "RedisTransport"),
    "rediss": ("kelp.aio.transport.redis", "RedisTransport"),
    "postgresql": ("kelp.aio.transport.postgres", "PostgresTransport"),
    "postgres": ("kelp.aio.transport.postgres", "PostgresTransport"),
}
#: Schemes kelp knows but whose transport is not in this build yet.
PLANNED: frozenset[str] = frozenset()
SCHEME_ALIASES = {"pyamqp": "amqp", "librabbitmq": "amqp"}

Callback = Callable[[Message], Any]


def resolve_transport(scheme: str) -> type[Transport]:
    """The transport class for a URL scheme, from the fixed table."""
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    entry = TRANSPORTS.get(scheme)
    if entry is None:
        if scheme in PLANNED:
            raise UnsupportedTransport(f"the {scheme}:// transport is not available in this version of kelp")
        known = ", ".join(sorted(TRANSPORTS))
        raise UnsupportedTransport(f"unknown transport {scheme!r}; kelp supports: {known}")
    module = importlib.import_module(entry[0])
    cls: type[Transport] = getattr(module, entry[1])
    return cls


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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- exchanges ------------------------------------------------------------------------------------

    async def exchange_declare(
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
        await self.transport_channel.declare_exchange(
            exchange, type, durable, auto_delete, internal, arguments, passive
        )

    async def exchange_delete(
        self, exchange: str = "", if_unused: bool = False, nowait: bool = False
    ) -> None:
        await self.transport_channel.delete_exchange(exchange, if_unused)

    async def exchange_bind(
        self,
        destination: str = "",
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self.transport_channel.bind("exchange", destination, source, routing_key, arguments)

    async def exchange_unbind(
        self,
        destination: str = "",
        source: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self.transport_channel.unbind("exchange", destination, source, routing_key, arguments)

    # --- queues ------------------------------------------------------------------------------------------

    async def queue_declare(
        self,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = True,
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
    ) -> QueueInfo:
        return await self.transport_channel.declare_queue(
            queue, durable, exclusive, auto_delete, arguments, passive
        )

    async def queue_bind(
        self,
        queue: str = "",
        exchange: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self.transport_channel.bind("queue", queue, exchange, routing_key, arguments)

    async def queue_unbind(
        self,
        queue: str = "",
        exchange: str = "",
        routing_key: str = "",
        nowait: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        await self.transport_channel.unbind("queue", queue, exchange, routing_key, arguments)

    async def queue_purge(self, queue: str = "", nowait: bool = False) -> int:
        return await self.transport_channel.purge_queue(queue)

    async def queue_delete(
        self, queue: str = "", if_unused: bool = False, if_empty: bool = False, nowait: bool = False
    ) -> int:
        return await self.transport_channel.delete_queue(queue, if_unused, if_empty)

    # --- entities (what Exchange/Queue forward to) -------------------------------------------------

    async def declare_exchange(self, exchange: Exchange, passive: bool = False) -> None:
        """Declare the exchange; nothing for the default exchange or one made with ``no_declare``."""
        if not exchange.name or exchange.no_declare:
            return
        await self.exchange_declare(
            exchange.name,
            exchange.type,
            exchange.durable,
            exchange.auto_delete,
            exchange.arguments,
            passive=passive,
            internal=exchange.internal,
        )

    async def queue_declare_entity(self, queue: Queue, passive: bool = False) -> QueueInfo:
        info = await self.queue_declare(
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
            await maybe_await(queue.on_declared(*info))
        return info

    async def bind_queue_entity(self, queue: Queue) -> None:
        for edge in queue.all_bindings:
            exchange = edge.exchange.name if edge.exchange is not None else ""
            await self.queue_bind(queue.name, exchange, edge.routing_key, arguments=edge.arguments)

    async def declare_queue(self, queue: Queue, passive: bool = False) -> str:
        """Declare the queue's exchanges, the queue and its bindings; return the (generated) name.

        A queue made with ``no_declare`` is never declared (it must exist): nothing is sent."""
        if queue.no_declare:
            return queue.name
        if not passive:
            for edge in queue.all_bindings:
                if edge.exchange is not None and edge.exchange.name and not edge.exchange.no_declare:
                    await self.declare_exchange(edge.exchange)
        await self.queue_declare_entity(queue, passive=passive)
        if not passive:
            await self.bind_queue_entity(queue)
        return queue.name

    async def get_message(
        self, queue: str, no_ack: bool = False, accept: Collection[str] | None = None
    ) -> Message | None:
        delivery = await self.transport_channel.get(queue, no_ack)
        if delivery is None:
            return None
        return Message(self, delivery, accept=accept, no_ack=no_ack)

    # --- basic ----------------------------------------------------------------------------------------

    async def basic_qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, a_global: bool = False
    ) -> None:
        """Limit unacked deliveries: per consumer started after this call (or per channel if global).

        ``prefetch_count`` is 0 (no limit) to 65535, as AMQP carries it; anything else raises UsageError."""
        if type(prefetch_count) is not int or not 0 <= prefetch_count <= 0xFFFF:
            raise UsageError(f"prefetch_count must be an integer from 0 to 65535, not {prefetch_count!r}")
        await self.transport_channel.qos(prefetch_count, a_global)

    async def basic_consume(
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
        tag = await self.transport_channel.consume(queue, consumer_tag, no_ack, arguments)
        self._callbacks[tag] = callback if callback is not None else _no_callback
        self._no_ack[tag] = no_ack
        return tag

    async def basic_cancel(self, consumer_tag: str, nowait: bool = False) -> None:
        self._callbacks.pop(consumer_tag, None)
        self._no_ack.pop(consumer_tag, None)
        if self.is_open:
            await self.transport_channel.cancel(consumer_tag)

    async def basic_get(
        self, queue: str = "", no_ack: bool = False, accept: Collection[str] | None = None
    ) -> Message | None:
        return await self.get_message(queue, no_ack, accept)

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        await self.transport_channel.ack(delivery_tag, multiple)

    async def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        await self.transport_channel.reject(delivery_tag, requeue)

    async def basic_nack(self, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> None:
        await self.transport_channel.reject(delivery_tag, requeue, multiple)

    async def basic_recover(self, requeue: bool = True) -> None:
        await self.transport_channel.recover(requeue)

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

    async def basic_publish(
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
        return await self.transport_channel.publish((message,))

    async def publish_batch(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Publish many addressed envelopes in one call (one round trip / transaction where possible)."""
        return await self.transport_channel.publish(envelopes)

    # --- deliveries ---------------------------------------------------------------------------------

    async def dispatch(self, delivery: Delivery) -> None:
        callback = self._callbacks.get(delivery.consumer_tag)
        if callback is None:
            # The consumer was cancelled after this delivery was claimed: give the message back.
            if not self._no_ack.get(delivery.consumer_tag, False) and self.is_open:
                await self.transport_channel.reject(delivery.delivery_tag, True)
            return
        message = Message(self, delivery, no_ack=self._no_ack.get(delivery.consumer_tag, False))
        await maybe_await(callback(message))

    async def close(self) -> None:
        """Close the channel: its consumers stop and its unacked messages return to their queues."""
        if not self.is_open:
            return
        self.is_open = False
        self._callbacks.clear()
        self.connection._forget_channel(self)
        await self.transport_channel.close()


def _no_callback(message: Message) -> None:
    logger.warning("message %r arrived for a consumer without a callback; it stays unacked", message)


class Connection:
    """A connection to a broker, chosen by URL (``memory://``, later ``sqlite://``, ``amqp://``...).

    ``hostname`` may be a URL, a ``;``-separated list of failover URLs, or a list of them. With no URL, the
    ``KELP_URL`` environment variable is used, then :data:`DEFAULT_URL`. ``async with Connection(url)``
    connects on entry and closes on exit; closing returns every unacked message to its queue.
    """

    def __init__(
        self,
        hostname: str | Sequence[str] | None = None,
        userid: str | None = None,
        password: str | None = None,
        virtual_host: str | None = None,
        port: int | None = None,
        insist: bool = False,
        ssl: Any = False,
        transport: str | None = None,
        connect_timeout: float = 5,
        transport_options: Mapping[str, Any] | None = None,
        login_method: str | None = None,
        uri_prefix: str | None = None,
        heartbeat: float = 0,
        failover_strategy: str = "round-robin",
        alternates: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_args: dict[str, Any] = {
            "hostname": hostname,
            "userid": userid,
            "password": password,
            "virtual_host": virtual_host,
            "port": port,
            "ssl": ssl,
            "transport": transport,
            "connect_timeout": connect_timeout,
            "transport_options": transport_options,
            "login_method": login_method,
            "heartbeat": heartbeat,
            "failover_strategy": failover_strategy,
            "alternates": alternates,
            **kwargs,
        }
        self.urls = _urls(hostname, userid, password, virtual_host, port, transport, alternates)
        self._url_cycle: Iterator[URL] = itertools.cycle(self.urls)
        self.url = next(self._url_cycle)
        self.ssl = ssl
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.login_method = login_method
        self.failover_strategy = failover_strategy
        self.transport_options: dict[str, Any] = dict(transport_options or {})
        self.transport_cls = resolve_transport(self.url.transport)
        for url in self.urls[1:]:
            resolve_transport(url.transport)
        # The connected transport (None while not connected), and one made unconnected to answer
        # questions about the broker kind before connecting (see the ``transport`` property).
        self._transport: Transport | None = None
        self._idle_transport: Transport | None = None
        #: The failover URLs as given (Kombu's ``alt``); empty for a single URL.
        self.alt: list[str] = _alternates(hostname, alternates)
        self._channels: dict[int, Channel] = {}
        self._default_channel: Channel | None = None
        self._pending: deque[Delivery] = deque()
        #: Entities declared through ``maybe_declare`` on this connection (forgotten on reconnect).
        self.declared_entities: set[Any] = set()
        # Consumers that consumed through this connection, restarted after a reconnect (see _recover).
        self._consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()
        self._connected_before = False
        # Envelopes a lost transport had not had confirmed: published again after the next connect.
        self._outbox: list[Envelope] = []

    # --- addressing -----------------------------------------------------------------------------------

    @property
    def hostname(self) -> str | None:
        return self.url.hostname

    @property
    def port(self) -> int | None:
        return self.url.port

    @property
    def userid(self) -> str | None:
        return self.url.userid

    @property
    def password(self) -> str | None:
        return self.url.password

    @property
    def virtual_host(self) -> str | None:
        return self.url.virtual_host

    @property
    def transport_name(self) -> str:
        return self.url.transport

    def as_uri(self, include_password: bool = False, mask: str = "**") -> str:
        """The URL of the current broker, with the password masked unless asked for."""
        return self.url.as_uri(include_password=include_password)

    def info(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "userid": self.userid,
            "password": "**" if self.password else None,
            "virtual_host": self.virtual_host,
            "port": self.port,
            "transport": self.transport_name,
            "connect_timeout": self.connect_timeout,
            "heartbeat": self.heartbeat,
            "failover_strategy": self.failover_strategy,
            "alternates": [u.as_uri() for u in self.urls],
            "transport_options": dict(self.transport_options),
            "ssl": self.ssl,
            "login_method": self.login_method,
            "uri_prefix": None,
        }

    def clone(self, **kwargs: Any) -> Connection:
        """A new, unconnected connection with the same settings (``kwargs`` override them)."""
        return type(self)(**{**self._init_args, **kwargs})

    def __repr__(self) -> str:
        return f"<Connection: {self.as_uri()} at {id(self):#x}>"

    # --- the transport, as Kombu exposes it ---------------------------------------------------------

    @property
    def transport(self) -> Transport:
        """The transport: the connected one, or before connecting one made now, unconnected, that tells
        the broker kind (``driver_type``, ``driver_name``, ``driver_version()``, ``implements``)."""
        if self._transport is not None:
            return self._transport
        idle = self._idle_transport
        if idle is None or type(idle) is not self.transport_cls or idle.url != self.url:
            idle = self._idle_transport = self.transport_cls(self.url, self._transport_options())
            idle.client = self
        return idle

    @property
    def connection(self) -> Transport:
        """The transport-level connection (kelp's connected transport). The sync API connects on first
        use; with asyncio, connect first."""
        # sync-only: self.connect() if not self.connected else None
        return self._require_transport()

    def supports_exchange_type(self, exchange_type: str) -> bool:
        """Whether the broker behind this connection routes through exchanges of ``exchange_type``."""
        return exchange_type in self.transport.implements.exchange_type

    @property
    def qos_semantics_matches_spec(self) -> bool:
        """Whether ``prefetch_count`` without ``global`` limits a whole channel, as AMQP 0-9-1 says
        (False where it limits each consumer, as on RabbitMQ 3.3 to 3.x and the brokers kelp runs)."""
        return self.transport.qos_semantics_matches_spec(self.connection)

    async def switch(self, conn_str: str) -> None:
        """Close, then use ``conn_str`` (a URL, or a host name for the current transport) from the next
        connect on; does not reconnect. Other settings and the failover list (``alt``) stay."""
        await self.close()
        self.declared_entities.clear()
        init = self._init_args
        self.url = _urls(
            conn_str,
            init["userid"],
            init["password"],
            init["virtual_host"],
            init["port"],
            self.url.transport,
            None,
        )[0]
        self.transport_cls = resolve_transport(self.url.transport)
        self._init_args = {**init, "hostname": conn_str, "alternates": self.alt or None}

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.is_connected

    async def connect(self) -> Self:
        """Connect (trying each failover URL once) and open the default channel."""
        return await self.ensure_connection(max_retries=len(self.urls) - 1, interval_start=0, interval_step=0)

    def _transport_options(self) -> dict[str, Any]:
        return {
            **self.transport_options,
            "heartbeat": self.heartbeat,
            "ssl": self.ssl,
            "login_method": self.login_method,
        }

    async def _connect_once(self) -> None:
        if self._transport is not None:  # a lost one: keep its unconfirmed publishes for the new one
            await self._discard_transport()
        transport = self.transport_cls(self.url, self._transport_options())
        transport.client = self
        await transport.connect(self.connect_timeout)
        self._transport = transport
        declared = list(self.declared_entities)
        self.declared_entities.clear()
        self._default_channel = await self.channel()
        if self._connected_before:
            await self._recover(declared)
        self._connected_before = True
        await self._republish_outbox()

    async def _republish_outbox(self) -> None:
        """Publish again what the lost connection's broker never confirmed (at-least-once: a message the
        broker took just before the loss arrives twice). Mandatory ones that no queue takes now are
        logged, since the producer that published them has already returned. Slices of
        ``_REPUBLISH_SLICE`` are each confirmed before the next is sent, so that a connection that keeps
        dropping still makes progress (what was confirmed before a drop is not sent a third time)."""
        if not self._outbox:
            return
        envelopes, self._outbox = self._outbox, []
        logger.warning("publishing again %d messages the lost connection had not confirmed", len(envelopes))
        done = 0
        try:
            while done < len(envelopes):
                chunk = envelopes[done : done + _REPUBLISH_SLICE]
                returned = await self.default_channel.publish_batch(chunk)
                done += len(chunk)  # in the transport's outbox now, until confirmed
                for envelope in returned:
                    logger.warning("%r was published again after a reconnect and no queue took it", envelope)
                assert self._transport is not None
                await self._transport.flush(None)
        except BaseException:
            self._outbox = envelopes[done:] + self._outbox
            raise

    async def _recover(self, declared: list[Any]) -> None:
        """After a reconnect: declare again what ``maybe_declare`` had declared (durable entities), then
        restart every consumer that was consuming, on the new default channel. Messages that were
        delivered but not acked on the lost connection come back from the broker flagged
        ``redelivered``; settling the old Message objects raises, since their channel is gone."""
        from kelp.aio.messaging import maybe_declare

        channel = self.default_channel
        for entity in declared:
            await maybe_declare(entity, channel)
        restarted = 0
        for consumer in list(self._consumers):
            if consumer.active_queues:
                consumer.revive(self)
                await consumer.consume()
                restarted += 1
        logger.warning(
            "reconnected to %s: declared %d entities again and restarted %d consumers",
            self.as_uri(),
            len(declared),
            restarted,
        )

    def _track_consumer(self, consumer: Consumer) -> None:
        self._consumers.add(consumer)

    def _consumer_cancelled(self, channel_id: int, consumer_tag: str) -> None:
        """The broker cancelled ``consumer_tag``: forget its callback, and tell its Consumer."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel._callbacks.pop(consumer_tag, None)
            channel._no_ack.pop(consumer_tag, None)
        for consumer in list(self._consumers):
            consumer._cancelled_by_broker(consumer_tag)

    async def ensure_connection(
        self,
        errback: Callable[[BaseException, float], Any] | None = None,
        max_retries: int | None = None,
        interval_start: float = 2,
        interval_step: float = 2,
        interval_max: float = 30,
        callback: Callable[[], Any] | None = None,
        reraise_as_library_errors: bool = True,
        timeout: float | None = None,
    ) -> Self:
        """Connect if needed, retrying with bounded backoff and moving through the failover URLs.

        ``max_retries`` None retries forever (bounded by ``timeout`` seconds if given). ``errback(exc,
        interval)`` is called before each wait. Raises the last connection error when retries run out.
        """
        if self.connected:
            return self
        deadline = None if timeout is None else monotonic() + timeout
        for attempt, interval in enumerate(_intervals(interval_start, interval_step, interval_max)):
            try:
                await self._connect_once()
                return self
            except self.recoverable_connection_errors as exc:
                await self._discard_transport()
                out_of_time = deadline is not None and monotonic() + interval > deadline
                if (max_retries is not None and attempt >= max_retries) or out_of_time:
                    raise
                logger.warning(
                    "connection to %s failed (%s); retrying in %.1fs", self.as_uri(), exc, interval
                )
                if errback is not None:
                    await maybe_await(errback(exc, interval))
                self.maybe_switch_next()
                await sleep(interval)
                if callback is not None:
                    await maybe_await(callback())
        raise AssertionError("unreachable")  # pragma: no cover

    def maybe_switch_next(self) -> None:
        """Move to the next failover URL (round robin)."""
        if len(self.urls) > 1:
            self.url = next(self._url_cycle)
            self.transport_cls = resolve_transport(self.url.transport)

    async def _discard_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            self._outbox.extend(transport.unconfirmed())
        for channel in self._channels.values():
            channel.is_open = False
        self._channels.clear()
        self._default_channel = None
        self._pending.clear()
        if transport is not None:
            try:
                await transport.close()
            except Exception:
                logger.debug("error while discarding a broken transport", exc_info=True)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker has confirmed every message published on this connection so far.

        Publishes do not wait for their confirms (they are pipelined); this is the barrier. Sends
        anything the transport buffered, then waits up to ``timeout`` seconds (None: as long as it takes).
        Raises MessageNacked naming the messages the broker refused (each refusal is reported once),
        ``socket.timeout`` if time ran out (the messages stay in the outbox, still owed a confirm), and a
        connection error if the connection was lost: its unconfirmed messages are then published again
        when the connection is re-established (``ensure_connection``, ``ensure``, a retried publish).
        """
        if self._transport is None:
            if self._outbox:
                raise OperationalError(
                    f"{len(self._outbox)} published messages wait for a reconnect to be published again"
                )
            return
        await self._transport.flush(timeout)

    async def close(self) -> None:
        """Close every channel and the connection; unacked messages go back to their queues.

        Publishes still owed a confirm are waited for first (as :meth:`flush`); a refusal found then is
        raised as MessageNacked once the connection is closed.
        """
        transport, self._transport = self._transport, None
        for channel in list(self._channels.values()):
            channel.is_open = False
        self._channels.clear()
        self._default_channel = None
        self._pending.clear()
        if self._outbox:
            logger.error(
                "closing %r with %d published messages never confirmed by the broker: they may be lost",
                self,
                len(self._outbox),
            )
            self._outbox.clear()
        if transport is None:
            return
        try:
            if transport.is_connected:
                await transport.flush(float(self.transport_options.get("close_timeout", 30.0)))
        except MessageNacked:
            raise
        except Exception as exc:
            unconfirmed = len(transport.unconfirmed())
            if unconfirmed:
                logger.error(
                    "closing %r: %d published messages were not confirmed by the broker (%s); "
                    "they may be lost",
                    self,
                    unconfirmed,
                    exc,
                )
        finally:
            await transport.close()

    release = close

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- channels -------------------------------------------------------------------------------------

    def _require_transport(self) -> Transport:
        if self._transport is None:
            raise OperationalError(f"{self!r} is not connected (use connect() or a with block)")
        return self._transport

    async def channel(self) -> Channel:
        """Open a new channel."""
        transport = self._transport
        if transport is None:
            await self.connect()
            transport = self._require_transport()
        channel = Channel(self, await transport.open_channel())
        self._channels[channel.channel_id] = channel
        return channel

    def _forget_channel(self, channel: Channel) -> None:
        self._channels.pop(channel.channel_id, None)
        if self._default_channel is channel:
            self._default_channel = None

    @property
    def default_channel(self) -> Channel:
        """The connection's own channel, used by producers and consumers given the connection.

        The sync API connects on first use; with asyncio, connect first (``await conn.connect()``).
        """
        # sync-only: self.ensure_default_channel()
        if self._default_channel is None:
            raise OperationalError(f"{self!r} has no open channel: connect first (await conn.connect())")
        return self._default_channel

    async def ensure_default_channel(self) -> Channel:
        """The default channel, connecting or reopening it when needed."""
        if not self.connected:
            await self.connect()
        if self._default_channel is None or not self._default_channel.is_open:
            self._default_channel = await self.channel()
        return self._default_channel

    # --- events ---------------------------------------------------------------------------------------

    async def drain_events(self, timeout: float | None = None) -> None:
        """Wait for deliveries and run the consumers' callbacks on them.

        Blocks up to ``timeout`` seconds (None: until something arrives) and raises ``socket.timeout``
        when nothing did. Deliveries received but not yet dispatched when a callback raises (or, in
        ``kelp.aio``, when the wait is cancelled) are kept and dispatched by the next call: none is lost.

        Raises :class:`~kelp.exceptions.ConsumerCancelled` when the broker cancelled a consumer because
        its queue was deleted (after dispatching what arrived before); that :class:`Consumer` then no
        longer lists the queue in ``active_queues``, and its ``consume()`` declares it again and
        resubscribes.
        """
        transport = self._require_transport()
        if not self._pending:
            try:
                self._pending.extend(await transport.drain(timeout))
            except ConsumerCancelled as exc:
                self._consumer_cancelled(exc.channel_id, exc.consumer_tag)
                raise
        pending = self._pending
        channels = self._channels
        while pending:
            delivery = pending.popleft()
            channel = channels.get(delivery.channel_id)
            if channel is not None:
                await channel.dispatch(delivery)

    # --- retrying -------------------------------------------------------------------------------------

    @property
    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.connection_errors

    @property
    def channel_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.channel_errors

    @property
    def recoverable_connection_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.connection_errors

    @property
    def recoverable_channel_errors(self) -> tuple[type[BaseException], ...]:
        return ()

    def ensure(
        self,
        obj: Any,
        fun: Callable[..., Any],
        errback: Callable[[BaseException, float], Any] | None = None,
        max_retries: int | None = None,
        interval_start: float = 1,
        interval_step: float = 1,
        interval_max: float = 1,
        on_revive: Callable[[Channel], Any] | None = None,
        retry_errors: tuple[type[BaseException], ...] | None = None,
    ) -> Callable[..., Any]:
        """Wrap ``fun`` so that a lost connection is re-established and the call retried.

        Only connection errors (and ``retry_errors``) are retried, at most ``max_retries`` times (None:
        forever) with bounded backoff; after reconnecting, ``obj.revive(channel)`` rebinds the object.
        A retried publish may be delivered twice if the first attempt reached the broker before the
        connection dropped (at-least-once).
        """
        errors = self.recoverable_connection_errors + tuple(retry_errors or ())

        async def ensured(*args: Any, **kwargs: Any) -> Any:
            intervals = _intervals(interval_start, interval_step, interval_max)
            for retries in itertools.count():
                try:
                    return await maybe_await(fun(*args, **kwargs))
                except errors as exc:
                    if max_retries is not None and retries >= max_retries:
                        raise
                    interval = next(intervals)
                    logger.warning("%s failed (%s); reconnecting and retrying in %.1fs", fun, exc, interval)
                    if errback is not None:
                        await maybe_await(errback(exc, interval))
                    await self._discard_transport()
                    self.maybe_switch_next()
                    await sleep(interval)
                    await self.ensure_connection(
                        max_retries=max_retries,
                        interval_start=interval_start,
                        interval_step=interval_step,
                        interval_max=interval_max,
                    )
                    channel = self.default_channel
                    if hasattr(obj, "revive"):
                        await maybe_await(obj.revive(channel))
                    if on_revive is not None:
                        await maybe_await(on_revive(channel))
            raise AssertionError("unreachable")  # pragma: no cover

        return ensured

    def autoretry(
        self, fun: Callable[..., Any], channel: Channel | None = None, **ensure_options: Any
    ) -> Callable[..., Any]:
        """``fun`` wrapped to reconnect and retry on connection errors (see :meth:`ensure`).

        The wrapper calls ``fun(*args, channel=channel, **kwargs)`` and returns ``(result, channel)``:
        ``channel`` is the one given here, the default channel when none was, and after a reconnect the
        new connection's default channel. A retried ``fun`` may run twice.
        """
        connection = self
        current: list[Channel | None] = [channel]

        class Revival:
            def revive(self, channel: Channel) -> None:
                current[0] = channel

            async def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, Channel]:
                used = current[0]
                if used is None:
                    used = current[0] = await connection.ensure_default_channel()
                return await maybe_await(fun(*args, channel=used, **kwargs)), used

        revival = Revival()
        return self.ensure(revival, revival, **ensure_options)

    # --- conveniences -----------------------------------------------------------------------------------

    def Producer(self, channel: Channel | None = None, *args: Any, **kwargs: Any) -> Producer:
        from kelp.aio.messaging import Producer

        return Producer(channel or self, *args, **kwargs)

    def Consumer(
        self,
        queues: Any = None,
        channel: Channel | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Consumer:
        from kelp.aio.messaging import Consumer

        return Consumer(channel or self, queues, *args, **kwargs)

    def SimpleQueue(
        self,
        name: str | Queue,
        no_ack: bool | None = None,
        queue_opts: Mapping[str, Any] | None = None,
        queue_args: Mapping[str, Any] | None = None,
        exchange_opts: Mapping[str, Any] | None = None,
        channel: Channel | None = None,
        **kwargs: Any,
    ) -> SimpleQueue:
        from kelp.aio.simple import SimpleQueue

        return SimpleQueue(channel or self, name, no_ack, queue_opts, queue_args, exchange_opts, **kwargs)

    def SimpleBuffer(
        self,
        name: str | Queue,
        no_ack: bool | None = None,
        queue_opts: Mapping[str, Any] | None = None,
        queue_args: Mapping[str, Any] | None = None,
        exchange_opts: Mapping[str, Any] | None = None,
        channel: Channel | None = None,
        **kwargs: Any,
    ) -> SimpleBuffer:
        from kelp.aio.simple import SimpleBuffer

        return SimpleBuffer(channel or self, name, no_ack, queue_opts, queue_args, exchange_opts, **kwargs)

    def Pool(self, limit: int | None = None, **kwargs: Any) -> ConnectionPool:
        from kelp.aio.pools import ConnectionPool

        return ConnectionPool(self, limit=limit, **kwargs)

    def ChannelPool(self, limit: int | None = None, **kwargs: Any) -> ChannelPool:
        from kelp.aio.pools import ChannelPool

        return ChannelPool(self, limit=limit, **kwargs)


def _urls(
    hostname: str | Sequence[str] | None,
    userid: str | None,
    password: str | None,
    virtual_host: str | None,
    port: int | None,
    transport: str | None,
    alternates: Sequence[str] | None,
) -> list[URL]:
    if hostname is None:
        hostname = os.environ.get("KELP_URL") or DEFAULT_URL
    raw = [hostname] if isinstance(hostname, str) else list(hostname)
    raw.extend(alternates or ())
    urls: list[URL] = []
    for item in raw:
        for url in parse_failover(_with_scheme(item, transport)):
            urls.append(_override(url, userid, password, virtual_host, port))
    if not urls:
        raise UsageError("Connection needs a URL (or set KELP_URL)")
    return urls


def _alternates(hostname: str | Sequence[str] | None, alternates: Sequence[str] | None) -> list[str]:
    if isinstance(hostname, str):
        given = hostname.split(";") if ";" in hostname else []
    else:
        # Kombu puts the alternates before a list of hosts.
        return [*(alternates or ()), *(hostname or ())]
    return [*given, *(alternates or ())]


def _with_scheme(hostname: str, transport: str | None) -> str:
    if "://" in hostname:
        return hostname
    return ";".join(f"{transport or 'amqp'}://{host}" for host in hostname.split(";"))


def _override(
    url: URL, userid: str | None, password: str | None, virtual_host: str | None, port: int | None
) -> URL:
    changes: dict[str, Any] = {}
    if userid is not None and url.userid is None:
        changes["userid"] = userid
    if password is not None and url.password is None:
        changes["password"] = password
    if virtual_host is not None:
        changes["virtual_host"] = virtual_host
    if port is not None:
        changes["port"] = port
    return dataclasses.replace(url, **changes) if changes else url


def _intervals(start: float, step: float, maximum: float) -> Iterator[float]:
    """Backoff intervals: start, start+step, ... capped at ``maximum``."""
    interval = start
    while True:
        yield min(interval, maximum) if maximum else interval
        interval += step
