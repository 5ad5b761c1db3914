"""Connections and channels: the library's handle on a broker.

``Connection(url)`` picks a transport from the URL's scheme (a fixed table: a URL never makes kelp import
an arbitrary module), connects, opens channels and drains deliveries to consumers. ``;``-separated URLs (or a
list) are failover alternatives tried in turn by :meth:`Connection.ensure_connection`.

A :class:`Channel` carries AMQP's methods under their usual names (``queue_declare``, ``basic_publish``,
``basic_ack``...) on top of the transport interface, and turns deliveries into :class:`Message` objects for
the consumer callbacks registered on it.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kelp._envelope import Delivery, Envelope
from kelp.aio._addressing import DEFAULT_URL, TRANSPORTS, _alternates, _urls, resolve_transport
from kelp.aio._addressing import PLANNED as PLANNED  # re-exported: defined here before the split
from kelp.aio._addressing import SCHEME_ALIASES as SCHEME_ALIASES
from kelp.aio._addressing import default_sqlite_path as default_sqlite_path
from kelp.aio._channel import Channel
from kelp.aio._reconnect import Reconnecting
from kelp.aio.transport.base import Transport
from kelp.entity import Queue
from kelp.exceptions import ConsumerCancelled, MessageNacked, OperationalError
from kelp.url import URL

if TYPE_CHECKING:
    from kelp.aio.messaging import Consumer, Producer
    from kelp.aio.pools import ChannelPool, ConnectionPool
    from kelp.aio.simple import SimpleBuffer, SimpleQueue

__all__ = ["DEFAULT_URL", "TRANSPORTS", "Channel", "Connection", "resolve_transport"]

logger = logging.getLogger("kelp.connection")


class Connection(Reconnecting):
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
