"""``Producer``: how a message is built and handed to the transport. The body is serialized and
compressed, the properties are filled in, a delayed message (``countdown``/``eta``) gets its due time and
id, the exchange is declared when asked, and returned (unroutable ``mandatory``) messages go to
``on_return``. See kelp.aio.messaging for the delivery model."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

from kelp import _observe
from kelp._delay import delayed_message_id, due_time
from kelp._envelope import Delivery, Envelope
from kelp.aio._backend import maybe_await
from kelp.aio._declare import _Source, maybe_declare
from kelp.aio.connection import Channel, Connection
from kelp.aio.message import Message
from kelp.compression import compress
from kelp.entity import Exchange, Queue, maybe_delivery_mode
from kelp.exceptions import ChannelError, UsageError
from kelp.serialization import dumps

__all__ = ["Producer", "delayed_message_id", "due_time"]

logger = logging.getLogger("kelp.messaging")

ReturnCallback = Callable[[Exception, str, str, Message], Any]


class Producer:
    """Publishes messages to an exchange.

    ``channel`` is a channel or a connection (its default channel). ``exchange`` and ``routing_key`` are
    defaults for :meth:`publish`; with ``auto_declare`` the exchange is declared before the first publish.
    ``on_return(exception, exchange, routing_key, message)`` receives mandatory messages that no queue
    took.
    """

    def __init__(
        self,
        channel: Channel | Connection,
        exchange: Exchange | str | None = None,
        routing_key: str | None = None,
        serializer: str | None = None,
        auto_declare: bool | None = None,
        compression: str | None = None,
        on_return: ReturnCallback | None = None,
    ) -> None:
        self._source = _Source(channel)
        self.exchange = Exchange(exchange) if isinstance(exchange, str) else (exchange or Exchange(""))
        self.routing_key = routing_key or ""
        self.serializer = serializer
        self.compression = compression
        self.on_return = on_return
        self.auto_declare = True if auto_declare is None else auto_declare
        self._declared = False
        # sync-only: self._maybe_declare_exchange()

    def __repr__(self) -> str:
        return f"<Producer: {self.exchange!r}>"

    @property
    def connection(self) -> Connection:
        return self._source.connection

    @property
    def channel(self) -> Channel:
        return self.connection.default_channel if self._source._channel is None else self._source._channel

    def revive(self, channel: Channel | Connection) -> None:
        """Rebind to a new channel (after a reconnect)."""
        self._source.revive(channel)
        self._declared = False

    async def declare(self) -> None:
        """Declare the producer's exchange (nothing for the default exchange)."""
        if self.exchange.name:
            await maybe_declare(self.exchange, await self._source.get())

    async def _maybe_declare_exchange(self) -> None:
        if self.auto_declare and not self._declared:
            self._declared = True
            await self.declare()

    async def maybe_declare(self, entity: Exchange | Queue, retry: bool = False, **retry_policy: Any) -> bool:
        return await maybe_declare(entity, await self._source.get(), retry, **retry_policy)

    def prepare(
        self,
        body: Any,
        routing_key: str | None = None,
        delivery_mode: int | str | None = None,
        mandatory: bool = False,
        priority: int = 0,
        content_type: str | None = None,
        content_encoding: str | None = None,
        serializer: str | None = None,
        headers: Mapping[str, Any] | None = None,
        compression: str | None = None,
        exchange: Exchange | str | None = None,
        expiration: float | None = None,
        reply_to: str | Queue | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | None = None,
        **properties: Any,
    ) -> Envelope:
        """Encode and address one message without sending it (what :meth:`publish` sends).

        ``countdown`` (seconds) or ``eta`` (an aware datetime) makes it a delayed message: the due time
        is fixed here, on this machine's wall clock, and a message id is generated if none was given."""
        due = due_time(countdown, eta)
        if content_type is None:
            content_type, content_encoding, payload = dumps(body, serializer or self.serializer)
        elif isinstance(body, str):
            content_encoding = content_encoding or "utf-8"
            payload = body.encode(content_encoding)
        elif isinstance(body, bytes | bytearray | memoryview):
            payload = bytes(body)
        else:
            raise UsageError("with content_type given, the body must already be bytes or str")
        message_headers = dict(headers) if headers else {}
        method = compression or self.compression
        if method:
            payload, message_headers["compression"] = compress(payload, method)
        if exchange is None:
            exchange = self.exchange
        if isinstance(exchange, str):  # a name: no Exchange object, whose delivery mode would be unset
            exchange_name, default_mode = exchange, 2
        else:
            exchange_name, default_mode = exchange.name, exchange.delivery_mode or 2
        mode = default_mode if delivery_mode is None else maybe_delivery_mode(delivery_mode)
        props: dict[str, Any] = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": mode,
            "priority": priority,
        }
        if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):  # an AMQP octet
            raise UsageError(f"priority must be an integer from 0 to 255, not {priority!r}")
        if expiration is not None:
            if (
                not isinstance(expiration, int | float)
                or isinstance(expiration, bool)
                or not 0 <= expiration < 2**53
            ):
                raise UsageError(f"expiration must be a number of seconds >= 0, not {expiration!r}")
            props["expiration"] = str(int(expiration * 1000))
        if reply_to is not None:
            props["reply_to"] = reply_to.name if isinstance(reply_to, Queue) else reply_to
        if properties:
            for key, value in properties.items():
                if value is not None:
                    props[_PROPERTY_ALIASES.get(key, key)] = value
            unknown = set(props) - _KNOWN_PROPERTIES
            if unknown:
                # Kombu accepts any keyword and AMQP 0-9-1 has no place for it: RabbitMQ never sees it.
                logger.warning("publish ignores properties AMQP does not have: %s", sorted(unknown))
                for key in unknown:
                    del props[key]
        if due is not None and not props.get("message_id"):
            props["message_id"] = delayed_message_id(due)
        return Envelope(
            payload,
            props,
            message_headers,
            exchange_name,
            self.routing_key if routing_key is None else routing_key,
            mandatory,
            due,
        )

    async def publish(
        self,
        body: Any,
        routing_key: str | None = None,
        delivery_mode: int | str | None = None,
        mandatory: bool = False,
        immediate: bool = False,
        priority: int = 0,
        content_type: str | None = None,
        content_encoding: str | None = None,
        serializer: str | None = None,
        headers: Mapping[str, Any] | None = None,
        compression: str | None = None,
        exchange: Exchange | str | None = None,
        retry: bool = False,
        retry_policy: Mapping[str, Any] | None = None,
        declare: Sequence[Exchange | Queue] | None = None,
        expiration: float | None = None,
        timeout: float | None = None,
        confirm_timeout: float | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | None = None,
        **properties: Any,
    ) -> str | None:
        """Publish one message; return its message id (None for an immediate message given none).

        ``body`` is serialized with ``serializer`` (default json; bytes and str pass through raw unless
        ``content_type`` is given, which means "already encoded"). ``delivery_mode`` is ``'persistent'``
        (the default) or ``'transient'``; ``expiration`` is a TTL in seconds; ``declare`` lists entities
        to declare first (once per connection when durable). With ``retry`` the publish is retried after
        reconnecting, per ``retry_policy`` (``max_retries``, ``interval_start``...).

        When this returns, a persistent message has left the process (a ``kill -9`` right after loses
        nothing); a transient one may wait a few milliseconds in the process to go out with others. It
        does not wait for the broker's confirm (unless the transport option ``confirm_publish`` is set, or
        the message is ``mandatory``): call :meth:`flush` for that. Raises MessageNacked if the broker
        refused this message or an earlier one of the connection and that is known by now; waits when the
        connection's outbox of unconfirmed messages is full.

        ``countdown`` (seconds from now, >= 0) or ``eta`` (an aware datetime; not both) delays the message:
        it is routed now and becomes ready in each of its queues no earlier than its due time (a due time
        already past means now). Until then it is invisible to consumers and ``get``, takes no prefetch
        slot, and its TTL (``expiration`` or the queue's) has not started. A persistent delayed message
        survives what a ready one survives. The returned id (``message_id``, generated when not given)
        cancels it with :meth:`cancel_delayed`. A transport that cannot delay raises UsageError rather
        than deliver early.
        """
        envelope = self.prepare(
            body,
            routing_key,
            delivery_mode,
            mandatory,
            priority,
            content_type,
            content_encoding,
            serializer,
            headers,
            compression,
            exchange,
            expiration,
            countdown=countdown,
            eta=eta,
            **properties,
        )
        if retry:
            await self.connection.ensure(self, self._publish, **dict(retry_policy or {}))(envelope, declare)
        else:
            await self._publish_batch((envelope,), declare)
        message_id: str | None = envelope.properties.get("message_id")
        return message_id

    async def publish_many(
        self, envelopes: Iterable[Envelope], declare: Sequence[Exchange | Queue] | None = None
    ) -> None:
        """Publish envelopes made by :meth:`prepare` in one batch (one round trip where possible); delayed
        ones (made with ``countdown`` or ``eta``) are held as :meth:`publish` holds them."""
        await self._publish_batch(list(envelopes), declare)

    async def cancel_delayed(self, message_id: str) -> int:
        """Withdraw the delayed message ``message_id`` (what :meth:`publish` returned) from every queue
        that still holds it undelivered; return how many copies were withdrawn, one per such queue (0: it
        was already due, cancelled, or never delayed). A message already ready is not touched. Messages
        published with the same ``message_id`` are all withdrawn. Raises UsageError on a transport that
        cannot cancel (amqp: RabbitMQ keeps no index of held messages)."""
        if not isinstance(message_id, str) or not message_id:
            raise UsageError(f"cancel_delayed needs the message id publish returned, not {message_id!r}")
        channel = await self._source.get()
        return await channel.transport_channel.cancel_delayed(message_id)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every message published on this producer's connection is confirmed by the broker;
        raise MessageNacked for any it refused (see :meth:`Connection.flush`)."""
        await self.connection.flush(timeout)

    async def _publish(self, envelope: Envelope, declare: Sequence[Exchange | Queue] | None) -> None:
        await self._publish_batch((envelope,), declare)

    async def _publish_batch(
        self, envelopes: Sequence[Envelope], declare: Sequence[Exchange | Queue] | None
    ) -> None:
        channel = await self._source.get()
        if not self._declared:
            await self._maybe_declare_exchange()
        for envelope in envelopes:
            if envelope.due is not None:
                transport = channel.connection.transport
                if not transport.implements.get("delayed_delivery"):
                    raise UsageError(
                        f"the {transport.url.transport}:// transport cannot hold delayed messages"
                    )
                break
        if declare:
            declared = channel.connection.declared_entities
            for entity in declare:
                if entity not in declared:
                    await maybe_declare(entity, channel)
        observer = _observe.observer
        if observer is None:
            returned = await channel.publish_batch(envelopes)
        else:
            done = observer.publish_start(channel.connection, envelopes)
            try:
                returned = await channel.publish_batch(envelopes)
            except BaseException as exc:
                done(exc)
                raise
            done(None)
        for envelope in returned:
            await self._returned(channel, envelope)

    async def _returned(self, channel: Channel, envelope: Envelope) -> None:
        error = ChannelError(
            f"NO_ROUTE: message to exchange {envelope.exchange!r} with routing key "
            f"{envelope.routing_key!r} was not routed to any queue",
            312,
        )
        message = Message(
            None,
            Delivery(
                channel.channel_id,
                "",
                0,
                envelope.body,
                envelope.properties,
                envelope.headers,
                envelope.exchange,
                envelope.routing_key,
                False,
            ),
        )
        if self.on_return is None:
            logger.warning("%s (no on_return callback)", error)
            return
        await maybe_await(self.on_return(error, envelope.exchange, envelope.routing_key, message))

    async def close(self) -> None:
        """Nothing to release: the channel belongs to the connection (kept for Kombu's API)."""

    release = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


_PROPERTY_ALIASES = {"type_": "type"}
_KNOWN_PROPERTIES = frozenset(
    {
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    }
)
