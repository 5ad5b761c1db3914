# Generated from src/kelp/aio/messaging.py by scripts/unasync.py; do not edit.
"""Producers publish, consumers receive: the two roles an application plays.

``Producer.publish`` serializes and compresses the body, fills in the message properties, declares what it
is asked to and hands the message to the transport, under one delivery model on every transport
(docs/transports.md): a persistent message has left the process when ``publish`` returns (written to the
broker's socket or committed to the file); confirms are pipelined, so ``publish`` does not wait for the
broker's answer unless ``confirm_publish`` is set; ``Producer.flush`` is the barrier that waits for every
earlier publish and raises ``MessageNacked`` for refused ones; a lost connection's unconfirmed messages are
published again after the reconnect (at-least-once).

A message published with ``countdown`` or ``eta`` is delayed: routed at once (the bindings of that moment
choose its queues), held by the broker and made ready in each queue at its due time, never earlier; until
then no consumer or ``get`` sees it and it takes no prefetch slot. ``publish`` returns its message id, which
:meth:`Producer.cancel_delayed` takes to withdraw it before it is due (docs/concepts.md).

``Consumer`` subscribes to queues and runs callbacks for each message as the connection drains events; the
callback decides: ``ack``, ``reject`` or ``requeue``.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

from kelp import _observe
from kelp._backend import maybe_await
from kelp._envelope import Delivery, Envelope
from kelp.compression import compress
from kelp.connection import Channel, Connection
from kelp.entity import Exchange, Queue, maybe_delivery_mode
from kelp.exceptions import ChannelError, ContentDisallowed, UsageError
from kelp.message import Message
from kelp.serialization import dumps, prepare_accept_content

__all__ = ["Consumer", "Producer", "maybe_declare"]

logger = logging.getLogger("kelp.messaging")

ReturnCallback = Callable[[Exception, str, str, Message], Any]


class _Source:
    """A channel, or a connection whose default channel is used (resolved lazily)."""

    def __init__(self, channel: Channel | Connection) -> None:
        self._connection: Connection | None = channel if isinstance(channel, Connection) else None
        self._channel: Channel | None = channel if isinstance(channel, Channel) else None

    @property
    def connection(self) -> Connection:
        if self._connection is not None:
            return self._connection
        assert self._channel is not None
        return self._channel.connection

    def get(self) -> Channel:
        channel = self._channel
        if channel is not None:
            if channel.is_open:
                return channel
            if self._connection is None:
                raise UsageError(f"{channel!r} is closed")
        return self.connection.ensure_default_channel()

    def revive(self, channel: Channel | Connection) -> None:
        if isinstance(channel, Connection):
            self._connection, self._channel = channel, None
        else:
            self._channel = channel


def maybe_declare(
    entity: Exchange | Queue,
    channel: Channel | Connection | None = None,
    retry: bool = False,
    **retry_policy: Any,
) -> bool:
    """Declare ``entity`` unless this connection already did; return True if it declared now.

    Only durable, non-auto-delete entities are remembered (others may vanish, so they are declared
    every time). The memory is per connection and is forgotten on reconnect.
    """
    if channel is None:
        channel = entity.channel
    if isinstance(channel, Connection):
        channel = channel.ensure_default_channel()
    connection = channel.connection
    key = entity if entity.can_cache_declaration else None
    if key is not None and key in connection.declared_entities:
        return False
    if retry:
        connection.ensure(entity, _declare, **retry_policy)(entity, channel)
    else:
        _declare(entity, channel)
    if key is not None:
        connection.declared_entities.add(key)
    return True


def _declare(entity: Exchange | Queue, channel: Channel) -> None:
    if isinstance(entity, Queue):
        channel.declare_queue(entity, passive=entity.passive)
    else:
        channel.declare_exchange(entity, passive=entity.passive)


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
        self._maybe_declare_exchange()

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

    def declare(self) -> None:
        """Declare the producer's exchange (nothing for the default exchange)."""
        if self.exchange.name:
            maybe_declare(self.exchange, self._source.get())

    def _maybe_declare_exchange(self) -> None:
        if self.auto_declare and not self._declared:
            self._declared = True
            self.declare()

    def maybe_declare(self, entity: Exchange | Queue, retry: bool = False, **retry_policy: Any) -> bool:
        return maybe_declare(entity, self._source.get(), retry, **retry_policy)

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

    def publish(
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
            self.connection.ensure(self, self._publish, **dict(retry_policy or {}))(envelope, declare)
        else:
            self._publish_batch((envelope,), declare)
        message_id: str | None = envelope.properties.get("message_id")
        return message_id

    def publish_many(
        self, envelopes: Iterable[Envelope], declare: Sequence[Exchange | Queue] | None = None
    ) -> None:
        """Publish envelopes made by :meth:`prepare` in one batch (one round trip where possible); delayed
        ones (made with ``countdown`` or ``eta``) are held as :meth:`publish` holds them."""
        self._publish_batch(list(envelopes), declare)

    def cancel_delayed(self, message_id: str) -> int:
        """Withdraw the delayed message ``message_id`` (what :meth:`publish` returned) from every queue
        that still holds it undelivered; return how many copies were withdrawn, one per such queue (0: it
        was already due, cancelled, or never delayed). A message already ready is not touched. Messages
        published with the same ``message_id`` are all withdrawn. Raises UsageError on a transport that
        cannot cancel (amqp: RabbitMQ keeps no index of held messages)."""
        if not isinstance(message_id, str) or not message_id:
            raise UsageError(f"cancel_delayed needs the message id publish returned, not {message_id!r}")
        channel = self._source.get()
        return channel.transport_channel.cancel_delayed(message_id)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message published on this producer's connection is confirmed by the broker;
        raise MessageNacked for any it refused (see :meth:`Connection.flush`)."""
        self.connection.flush(timeout)

    def _publish(self, envelope: Envelope, declare: Sequence[Exchange | Queue] | None) -> None:
        self._publish_batch((envelope,), declare)

    def _publish_batch(
        self, envelopes: Sequence[Envelope], declare: Sequence[Exchange | Queue] | None
    ) -> None:
        channel = self._source.get()
        if not self._declared:
            self._maybe_declare_exchange()
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
                    maybe_declare(entity, channel)
        observer = _observe.observer
        if observer is None:
            returned = channel.publish_batch(envelopes)
        else:
            done = observer.publish_start(channel.connection, envelopes)
            try:
                returned = channel.publish_batch(envelopes)
            except BaseException as exc:
                done(exc)
                raise
            done(None)
        for envelope in returned:
            self._returned(channel, envelope)

    def _returned(self, channel: Channel, envelope: Envelope) -> None:
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
        maybe_await(self.on_return(error, envelope.exchange, envelope.routing_key, message))

    def close(self) -> None:
        """Nothing to release: the channel belongs to the connection (kept for Kombu's API)."""

    release = close

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def due_time(countdown: float | None, eta: datetime.datetime | None) -> float | None:
    """The wall-clock due time of a message published with ``countdown`` or ``eta`` (None when neither is
    given or the time is already past: deliver now); UsageError for a bad value."""
    if countdown is None and eta is None:
        return None
    if countdown is not None and eta is not None:
        raise UsageError("give countdown or eta, not both")
    now = time.time()
    if countdown is None:
        if eta is None:
            return None
        if not isinstance(eta, datetime.datetime):
            raise UsageError(f"eta must be a datetime, not {eta!r}")
        if eta.utcoffset() is None:
            raise UsageError(f"eta must be an aware datetime (with a timezone), not the naive {eta!r}")
        due = eta.timestamp()
    else:
        if not isinstance(countdown, int | float) or isinstance(countdown, bool):
            raise UsageError(f"countdown must be a number of seconds, not {countdown!r}")
        if not countdown >= 0 or not math.isfinite(countdown):
            raise UsageError(f"countdown must be >= 0 seconds, not {countdown!r}")
        due = now + countdown
    return due if due > now else None


def delayed_message_id(due: float) -> str:
    """A generated id for a delayed message: ``kd-<due time in ms, hex>-<16 random hex digits>``. It
    carries the due time so that a store can find the message by its due-time index (sqlite://)."""
    return f"kd-{int(due * 1000):x}-{secrets.token_hex(8)}"


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

_tags = itertools.count(1)


class Consumer:
    """Receives messages from one or more queues and hands them to callbacks.

    ``callbacks`` are called as ``callback(body, message)`` with the decoded body; ``on_message(message)``
    replaces them and receives the undecoded message. A body that cannot be decoded — refused by the
    ``accept`` list (by default only json and raw content are decoded), not deserializable, or not
    decompressible (an unknown or corrupt ``compression``; this one bypasses ``on_message`` too) — goes to
    ``on_decode_error(message, exc)``, where the message can be acked or rejected. With no
    ``on_decode_error`` the error raises from ``drain_events`` and the message stays unacked until its
    channel closes; deliveries behind it are dispatched by the next ``drain_events``. Messages arrive
    only while the connection drains events (``drain_events``, ``iterate``, ``for``).

    ``prefetch_count`` bounds the unacked messages delivered to each of this consumer's queues.
    """

    ContentDisallowed = ContentDisallowed

    def __init__(
        self,
        channel: Channel | Connection,
        queues: Queue | Sequence[Queue] | None = None,
        no_ack: bool | None = None,
        auto_declare: bool | None = None,
        callbacks: Sequence[Callable[[Any, Message], Any]] | None = None,
        on_decode_error: Callable[[Message, Exception], Any] | None = None,
        on_message: Callable[[Message], Any] | None = None,
        accept: Iterable[str] | None = None,
        prefetch_count: int | None = None,
        tag_prefix: str | None = None,
    ) -> None:
        self._source = _Source(channel)
        if isinstance(queues, Queue):
            queues = [queues]
        self.queues: list[Queue] = list(queues or [])
        self.no_ack = bool(no_ack)
        self.auto_declare = True if auto_declare is None else auto_declare
        self.callbacks: list[Callable[[Any, Message], Any]] = list(callbacks or [])
        self.on_decode_error = on_decode_error
        self.on_message = on_message
        self.accept = prepare_accept_content(accept)
        self.prefetch_count = prefetch_count
        self.tag_prefix = tag_prefix if tag_prefix is not None else f"kelp.{uuid.uuid4().hex[:12]}."
        self._tags: dict[str, str] = {}
        self._channel_used: Channel | None = None
        # Messages received for iterate() and not yet yielded (None when not iterating).
        self._buffer: deque[Message] | None = None
        self.declare() if self.auto_declare else None

    def __repr__(self) -> str:
        return f"<Consumer: {self.queues!r}>"

    @property
    def connection(self) -> Connection:
        return self._source.connection

    @property
    def channel(self) -> Channel:
        return self.connection.default_channel if self._source._channel is None else self._source._channel

    def revive(self, channel: Channel | Connection) -> None:
        """Rebind to a new channel after a reconnect; call :meth:`consume` again to resume.

        A no-op when the consumer already consumes on that channel: the connection restarts its
        consumers itself when it reconnects, before ``Connection.ensure`` revives objects."""
        target = channel._default_channel if isinstance(channel, Connection) else channel
        if self._channel_used is not None and self._channel_used is target and target.is_open:
            return
        self._source.revive(channel)
        self._tags.clear()
        self._channel_used = None

    def declare(self) -> None:
        """Declare every queue (with its exchanges and bindings)."""
        channel = self._source.get()
        for queue in self.queues:
            maybe_declare(queue, channel)

    def register_callback(self, callback: Callable[[Any, Message], Any]) -> None:
        self.callbacks.append(callback)

    def add_queue(self, queue: Queue) -> Queue:
        """Add a queue (declared now when ``auto_declare``); consumed from by the next :meth:`consume`."""
        if self.auto_declare:
            maybe_declare(queue, self._source.get())
        self.queues.append(queue)
        return queue

    def consume(self, no_ack: bool | None = None) -> None:
        """Start consuming from every queue not consumed yet (declaring them when ``auto_declare``)."""
        channel = self._source.get()
        if self.auto_declare:
            for queue in self.queues:
                maybe_declare(queue, channel)
        if self.prefetch_count is not None:
            channel.basic_qos(0, self.prefetch_count, False)
        flag = self.no_ack if no_ack is None else no_ack
        for queue in self.queues:
            if queue.name in self._tags:
                continue
            tag = f"{self.tag_prefix}{next(_tags)}"
            channel.connection._track_consumer(self)
            self._tags[queue.name] = channel.basic_consume(
                queue.name,
                tag,
                no_ack=bool(queue.no_ack) or flag,
                callback=self._receive_callback,
                arguments=queue.consumer_arguments,
            )
        self._channel_used = channel

    def cancel(self) -> None:
        """Stop consuming. Messages delivered but not settled stay unacked until settled or closed;
        messages received for :meth:`iterate` but never yielded are requeued, in order."""
        channel = self._channel_used
        tags, self._tags = self._tags, {}
        if channel is not None:
            for tag in tags.values():
                channel.basic_cancel(tag)
        buffer, self._buffer = self._buffer, None
        while buffer:
            # Newest first: each requeue goes to the head of its queue, so the order is kept.
            message = buffer.pop()
            if not message.acknowledged and message.channel is not None and message.channel.is_open:
                message.requeue()

    close = cancel

    def cancel_by_queue(self, queue: str) -> None:
        tag = self._tags.pop(queue, None)
        if tag is not None and self._channel_used is not None:
            self._channel_used.basic_cancel(tag)
        self.queues = [q for q in self.queues if q.name != queue]

    def _cancelled_by_broker(self, consumer_tag: str) -> None:
        """The broker cancelled one of our subscriptions (its queue was deleted): forget it, and forget
        that the queue was declared, so that :meth:`consume` declares it again and resubscribes."""
        for name, tag in list(self._tags.items()):
            if tag == consumer_tag:
                del self._tags[name]
                for queue in self.queues:
                    if queue.name == name:
                        self.connection.declared_entities.discard(queue)

    def consuming_from(self, queue: str | Queue) -> bool:
        name = queue.name if isinstance(queue, Queue) else queue
        return name in self._tags

    @property
    def active_queues(self) -> list[str]:
        return list(self._tags)

    def purge(self) -> int:
        """Purge every queue of this consumer; return the number of messages removed."""
        channel = self._source.get()
        return sum([channel.queue_purge(queue.name) for queue in self.queues])

    def qos(self, prefetch_size: int = 0, prefetch_count: int = 0, apply_global: bool = False) -> None:
        """Set the prefetch window for consumers started after this call (AMQP basic.qos)."""
        self.prefetch_count = prefetch_count
        (self._source.get()).basic_qos(prefetch_size, prefetch_count, apply_global)

    def recover(self, requeue: bool = False) -> None:
        """Return every unacked message of this channel to its queue, to be redelivered."""
        (self._source.get()).basic_recover(requeue=True)

    def flow(self, active: bool) -> None:
        """Not supported by kelp's transports; present for API compatibility."""
        raise UsageError("channel flow control is not supported; cancel and consume instead")

    def receive(self, body: Any, message: Message) -> None:
        """Run the callbacks on a decoded message."""
        if not self.callbacks:
            raise UsageError(f"{self!r} received a message but has no callbacks; add one or use on_message")
        for callback in self.callbacks:
            maybe_await(callback(body, message))

    def _receive_callback(self, message: Message, observed: bool = False) -> None:
        message.accept = self.accept
        if self._buffer is not None:
            self._buffer.append(message)
            return
        observer = _observe.observer
        if observer is not None and not observed:
            # Runs this method again inside the process span (unobserved, it costs no extra call).
            done = observer.process_start(self.connection, _observe.queue_of(self._tags, message), message)
            try:
                self._receive_callback(message, True)
            except BaseException as exc:
                done(exc)
                raise
            done(None)
            return
        if message.errors:  # not decompressible: even on_message would get a body it cannot use
            self._decode_error(message, message.errors[0])
            return
        if self.on_message is not None:
            maybe_await(self.on_message(message))
            return
        try:
            body = message.decode()
        except Exception as exc:
            self._decode_error(message, exc)
            return
        self.receive(body, message)

    def _decode_error(self, message: Message, exc: Exception) -> None:
        if self.on_decode_error is None:
            raise exc
        maybe_await(self.on_decode_error(message, exc))

    def iterate(self, limit: int | None = None, timeout: float | None = None) -> Iterator[Message]:
        """Yield messages as they arrive (starting to consume if needed), up to ``limit``.

        Each wait lasts at most ``timeout`` seconds (None: forever) and raises ``socket.timeout`` when it
        runs out. While iterating, callbacks are bypassed. Messages received but not yet yielded when the
        loop stops stay buffered for the next iteration, and :meth:`cancel` requeues them: none is lost.
        """
        if self._buffer is None:
            self._buffer = deque()
        buffer = self._buffer
        if not self._tags:
            self.consume()
        count = 0
        while limit is None or count < limit:
            while not buffer:
                self.connection.drain_events(timeout=timeout)
            message = buffer.popleft()
            observer = _observe.observer
            if observer is None:
                yield message
            else:
                # The span covers the loop body: from this yield until the loop asks for the next one.
                done = observer.process_start(
                    self.connection, _observe.queue_of(self._tags, message), message
                )
                try:
                    yield message
                except BaseException as exc:
                    done(exc)
                    raise
                done(None)
            count += 1

    def __iter__(self) -> Iterator[Message]:
        return self.iterate()

    def __enter__(self) -> Self:
        self.consume()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()
