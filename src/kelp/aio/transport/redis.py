"""``redis://`` and ``rediss://``: kelp's broker on Redis streams, with RabbitMQ's semantics.

``redis://[user:password@]host[:port][/db][?prefix=kelp&liveness=10]`` (``rediss://`` for TLS). Every
declaration (exchanges, queues, bindings, arguments) is stored in Redis under the prefix, so all processes
sharing a prefix see one topology; different prefixes are separate brokers.

What happens to a message:

* **publish** routes and stores in one server-side Lua script (:mod:`kelp._broker.redis.script`): the
  matched queues get their copies atomically, or none does; a batch is one round trip. With
  ``confirm_publish`` (URL query or transport option), and always for a ``mandatory`` message, one to an
  exchange this connection has not seen exist, or while the broker has a queue that may refuse it
  (``x-overflow: reject-publish``): when ``publish`` returns, Redis has the message (in memory, and on
  disk as its persistence settings say: see ``docs/transports.md``), a refusal raises
  :class:`~kelp.exceptions.MessageNacked` and unroutable ``mandatory`` messages are returned.
  Otherwise the message is *buffered* in this connection and sent with the others in one pipeline: when
  ``PUBLISH_BATCH`` are waiting, ``LINGER`` seconds after the first, before any other operation of the
  connection (so it reads its own writes) and at close. A refusal found then is logged and the message
  dropped, as RabbitMQ does without confirms.
* **queues** are Redis streams (one per priority level, plus one per level for requeued messages, which
  go first) read through one consumer group. A delivery moves the entry into the group's pending list
  under this connection's name in the same script that reads it, so there is no moment when a message is
  neither in the queue nor pending: a crash never loses one.
* **ack** removes the entry (XACK + XDEL). Acks are sent in batches, with the connection's next operation
  (its next drain, publish, get...) or when the batch is full; a process that dies before that gets those
  messages redelivered (at-least-once, as in AMQP). **reject** / **requeue** / channel close put entries
  back at the head of their queue, flagged ``redelivered``; ``reject(requeue=False)`` dead-letters.
* **liveness**: every connection refreshes a heartbeat (an asyncio task in the async API, a daemon
  thread in the sync one) every second. When a connection has been silent for ``liveness`` seconds
  (default 10), the next live connection to beat releases its pending messages (redelivered, flagged, to
  anyone), its consumers and its exclusive queues. A consumer busy for minutes keeps its messages as long
  as its process beats; with asyncio that means its callbacks must not block the event loop that long.
* **prefetch** is honoured exactly: a claim never reads more than the consumers' free windows.
* **drain** waits with a bounded ``XREAD BLOCK`` on the consumed streams (never more than half a second
  per call), so timeouts are respected and the async API never blocks its event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from redis.asyncio import Redis  # async-only

# sync-only: from redis import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from kelp._broker.malformed import Malformed, malformed_tables, report_dropped
from kelp._broker.queue_args import (
    QueueArgs,
    check_name,
    dead_letter,
    expiration_ms,
    generated_queue_name,
    tag,
)
from kelp._broker.redis.codec import (
    binding_member,
    decode_arguments,
    decode_meta,
    encode_arguments,
    encode_meta,
    headers_canon,
)
from kelp._broker.redis.script import SHA, SOURCE
from kelp._broker.redis.ticker import AsyncLinger as Linger  # async-only
from kelp._broker.redis.ticker import AsyncTicker as Ticker  # async-only

# sync-only: from kelp._broker.redis.ticker import ThreadLinger as Linger
# sync-only: from kelp._broker.redis.ticker import ThreadTicker as Ticker
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp._options import integer_option, seconds_option
from kelp.aio._backend import Lock, Signal, monotonic
from kelp.aio.transport.base import Transport, TransportChannel, queue_deleted
from kelp.exceptions import (
    AccessRefused,
    ChannelError,
    MessageNacked,
    NotFound,
    OperationalError,
    PreconditionFailed,
    ResourceLocked,
    UsageError,
)
from kelp.routing import validate_exchange_type

__all__ = ["RedisChannel", "RedisTransport"]

logger = logging.getLogger("kelp.transport.redis")

#: Deliveries one claim may take for a consumer without a prefetch limit.
MAX_CLAIM = 1000
#: The longest single blocking wait in drain: local events (a new consumer, a freed window) are noticed
#: within this time even while a wait is in progress.
WAIT_CAP = 0.5
#: Acks buffered before they are sent without waiting for the connection's next operation.
ACK_BATCH = 512
#: Envelopes per script call in a published batch (all calls of a batch share one round trip).
PUBLISH_CHUNK = 500
#: Unconfirmed publishes buffered before the publisher sends them itself.
PUBLISH_BATCH = 256
#: Seconds an unconfirmed publish waits in the buffer at most when the publisher pauses.
LINGER = 0.001
_TRUE = frozenset({"1", "true", "yes", "on"})

_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_KELP_ERROR = re.compile(r"KELP:([A-Z_]+):(.*)", re.DOTALL)


class _Lost(OperationalError):
    """The broker released this connection (it missed its heartbeats for longer than liveness)."""


_ERRORS: dict[str, type[Exception]] = {
    "LOST": _Lost,
    "NOT_FOUND": NotFound,
    "PRECONDITION": PreconditionFailed,
    "LOCKED": ResourceLocked,
    "ACCESS": AccessRefused,
    "VALUE": ValueError,
}


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Turn redis-py's exceptions into kelp's: broker refusals into channel errors, the rest operational."""
    try:
        yield
    except ResponseError as exc:
        match = _KELP_ERROR.search(str(exc))
        if match is None:
            raise OperationalError(f"redis: {exc}") from exc
        raise _ERRORS[match.group(1)](match.group(2)) from None
    except RedisError as exc:
        raise OperationalError(f"redis: {exc}") from exc


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Consumer:
    __slots__ = ("key", "no_ack", "prefetch", "queue", "tag", "unacked")

    def __init__(self, tag: str, queue: str, key: str, no_ack: bool, prefetch: int) -> None:
        self.tag = tag
        self.queue = queue
        self.key = key  # "<channel>:<tag>", its name in the queue's consumer table
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.unacked = 0


class _Unacked:
    __slots__ = ("consumer", "entry_id", "queue", "suffix")

    def __init__(self, queue: str, suffix: str, entry_id: bytes, consumer: _Consumer | None) -> None:
        self.queue = queue
        self.suffix = suffix
        self.entry_id = entry_id
        self.consumer = consumer


def _dead_letter_args(entry: list[Any], now: float) -> tuple[Any, ...]:
    """The publish arguments that route one outbox entry (a dead letter) with its rewritten headers; a
    malformed message is dead-lettered as kelp._broker.malformed says."""
    entry_id, queue, reason, exchange, has_key, key, body, meta = entry
    try:
        properties, headers, origin, routing_key = decode_meta(meta)
    except Malformed as exc:
        properties, headers = malformed_tables(str(exc), {"meta": meta})
        origin = routing_key = ""
    result = dead_letter(
        headers,
        properties,
        queue=_text(queue),
        reason=_text(reason),
        exchange=origin,
        routing_key=routing_key,
        now=now,
    )
    if result is None:
        # A dead-letter cycle: RabbitMQ drops the message; "x" removes it from the outbox only.
        return ("", "", "", "x", 0, "", b"", b"", entry_id)
    new_headers, new_properties = result
    target = _text(exchange)
    target_key = _text(key) if has_key else routing_key
    priority = new_properties.get("priority")
    return (
        target,
        target_key,
        headers_canon(new_headers),
        "",
        priority if type(priority) is int else 0,
        "",
        body,
        encode_meta(new_properties, new_headers, target, target_key),
        entry_id,
    )


class RedisChannel(TransportChannel):
    """A channel: its consumers, prefetch windows and unacked deliveries live here, in the process."""

    def __init__(self, transport: RedisTransport, channel_id: int) -> None:
        self._transport = transport
        self.channel_id = channel_id
        self.next_tag = 1
        self.unacked: dict[int, _Unacked] = {}
        self.consumers: dict[str, _Consumer] = {}
        self.prefetch = 0
        self.prefetch_global = 0

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
        if args.overflow != "drop-head":
            transport.may_refuse = True  # publishes wait for the answer until one says no queue refuses
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
        if global_:
            self.prefetch_global = prefetch_count
        else:
            self.prefetch = prefetch_count
            for consumer in self.consumers.values():
                consumer.prefetch = prefetch_count
        self._transport.wake()

    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        consumer_tag = consumer_tag or tag("amq.ctag-")
        if consumer_tag in self.consumers:
            raise UsageError(f"consumer tag {consumer_tag!r} is already in use on this channel")
        key = f"{self.channel_id}:{consumer_tag}"
        await self._transport.call("consume", self._transport.connection_id, queue, key)
        self.consumers[consumer_tag] = _Consumer(consumer_tag, queue, key, no_ack, self.prefetch)
        self._transport.wake()
        return consumer_tag

    async def cancel(self, consumer_tag: str) -> None:
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is not None and self._transport.is_connected:  # a released connection has no consumers
            await self._transport.call("cancel", self._transport.connection_id, consumer.key)

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
        consumer: _Consumer | None,
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
        delivery_tag = self.next_tag
        self.next_tag += 1
        if not no_ack:
            self.unacked[delivery_tag] = _Unacked(queue, suffix, entry_id, consumer)
            if consumer is not None:
                consumer.unacked += 1
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
        for item in self._settle(delivery_tag, multiple):
            if item.consumer is not None:
                item.consumer.unacked -= 1
            transport.queue_ack(item.queue, item.suffix, item.entry_id)
        transport.wake()
        if transport.pending_acks >= ACK_BATCH:
            await transport.flush()

    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        await self._settle_remote(self._settle(delivery_tag, multiple), requeue)

    async def recover(self, requeue: bool) -> None:
        """Requeue every unacked delivery of the channel (AMQP basic.recover; kelp always requeues)."""
        await self._settle_remote(self._settle(0, True), True)

    async def _settle_remote(self, items: list[_Unacked], requeue: bool) -> None:
        if not items:
            return
        args: list[Any] = []
        for item in items:
            if item.consumer is not None:
                item.consumer.unacked -= 1
            args += (item.queue, item.suffix, item.entry_id)
        transport = self._transport
        outbox = await transport.call("settle", transport.connection_id, _flag(requeue), len(items), *args)
        transport.wake()
        if outbox:
            await transport.flush_outbox()

    def _settle(self, delivery_tag: int, multiple: bool) -> list[_Unacked]:
        if multiple:
            tags = (
                sorted(t for t in self.unacked if t <= delivery_tag) if delivery_tag else sorted(self.unacked)
            )
            return [self.unacked.pop(t) for t in tags]
        item = self.unacked.pop(delivery_tag, None)
        if item is None:
            raise ChannelError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}", 406)
        return [item]

    async def close(self) -> None:
        transport = self._transport
        if transport.forget_channel(self) and transport.is_connected:
            for consumer_tag in list(self.consumers):
                await self.cancel(consumer_tag)
            await self._settle_remote(self._settle(0, True), True)


class RedisTransport(Transport):
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {"prefix", "liveness", "socket_timeout", "confirm_publish"}
    )

    def __init__(self, url: Any, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        query = url.query
        prefix = query.get("prefix", "kelp")
        if not _PREFIX.fullmatch(prefix):
            raise UsageError(f"redis:// prefix must be 1-64 of A-Z a-z 0-9 _ . - characters, not {prefix!r}")
        self.prefix = prefix
        self._key = "{" + prefix + "}:"
        self._outbox_key = self._key + "outbox"
        scheme = url.transport
        liveness = seconds_option(scheme, "liveness", query.get("liveness", options.get("liveness", 10.0)))
        self.liveness = liveness
        self._beat_interval = min(1.0, liveness / 4)
        self._socket_timeout = seconds_option(scheme, "socket_timeout", query.get("socket_timeout", 30.0))
        self._db = integer_option(scheme, "database (the URL's path)", url.path or "0", 0, 2**31 - 1)
        confirm = str(query.get("confirm_publish", "")).lower() in _TRUE
        self.confirm_publish = confirm or bool(options.get("confirm_publish"))
        #: Exchanges this connection saw exist: only publishes to these may be buffered (the first
        #: publish to any other waits for the script, so a missing exchange raises NotFound).
        self.exchanges: set[str] = {""}
        #: Whether the broker may hold a queue that refuses publishes (x-overflow reject-publish*): while
        #: it does, publishes wait for the answer. Every publish's answer refreshes it.
        self.may_refuse = True
        self._buffer: list[Any] = []  # buffered publishes: the script's arguments, 9 per envelope
        self._buffer_lock = threading.Lock()  # the publisher appends, the linger timer takes
        self._send_lock = Lock()  # one pipeline at a time: nothing overtakes buffered publishes
        self._linger: Linger | None = None
        self.connection_id = secrets.token_hex(8)
        #: Claimed entries whose meta kelp cannot read: (queue, suffix, id, no_ack, problem); see quarantine.
        self.malformed: list[tuple[str, str, bytes, bool, str]] = []
        self._client: Any = None
        self._lost = False
        self._channels: dict[int, RedisChannel] = {}
        self._next_channel = 1
        self._acks: dict[str, list[bytes]] = {}
        self.pending_acks = 0
        self._signal = Signal()
        self._ticker: Ticker | None = None
        # (channel id, consumer tag, queue) of consumers whose queue was deleted, not yet reported
        self._cancelled: list[tuple[int, str, str]] = []

    # --- connection -------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._client is not None and not self._lost

    def info(self) -> dict[str, Any]:
        return {**super().info(), "prefix": self.prefix, "confirm_publish": self.confirm_publish}

    def _require(self) -> Any:
        if self._client is None:
            raise OperationalError("the redis:// connection is closed")
        if self._lost:
            raise OperationalError(
                "the redis:// connection missed its heartbeats for longer than liveness "
                f"({self.liveness}s) and was released: its unacked messages were redelivered; reconnect"
            )
        return self._client

    async def connect(self, timeout: float | None) -> None:
        if self._client is not None:
            return
        url = self.url
        ssl_options = self.options.get("ssl")
        ssl_kwargs: dict[str, Any] = {}
        if url.transport == "rediss" or ssl_options:
            ssl_kwargs["ssl"] = True
            if isinstance(ssl_options, Mapping):
                for key, value in ssl_options.items():
                    ssl_kwargs[key if key.startswith("ssl_") else f"ssl_{key}"] = value
        client: Any = Redis(
            host=url.hostname or "localhost",
            port=url.port or 6379,
            db=self._db,
            username=url.userid or None,
            password=url.password or None,
            socket_connect_timeout=timeout,
            socket_timeout=self._socket_timeout,
            protocol=2,
            **ssl_kwargs,
        )
        try:
            with _mapped():
                await client.execute_command("SCRIPT", "LOAD", SOURCE)
                outbox = await client.execute_command(
                    "EVALSHA", SHA, 1, self._key, "init", self.connection_id, self._liveness_ms
                )
        except BaseException:
            await client.connection_pool.disconnect()
            raise
        self._client = client
        self._lost = False
        self._ticker = Ticker(self._beat_interval, self._beat, f"kelp-redis-heartbeat-{self.connection_id}")
        self._ticker.start()
        self._linger = Linger(LINGER, self._flush_publishes, f"kelp-redis-linger-{self.connection_id}")
        if outbox:
            await self.flush_outbox()

    @property
    def _liveness_ms(self) -> int:
        return int(self.liveness * 1000)

    async def close(self) -> None:
        """Release everything this connection holds (unacked messages go back, flagged) and disconnect."""
        client = self._client
        if client is None:
            return
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            await ticker.stop()
        linger, self._linger = self._linger, None
        if linger is not None:
            await linger.stop()
        self._channels.clear()
        try:
            if not self._lost:
                for _ in range(10_000):  # the first call sends the buffered publishes and acks first
                    if not await self.call("reap", self.connection_id):
                        break
        except OperationalError:
            # Redis is unreachable: the other connections' heartbeats release our messages after liveness.
            pass
        finally:
            if self._buffer:
                logger.warning(
                    "kelp: %d buffered (unconfirmed) publishes were lost: the connection closed unreachable",
                    len(self._buffer) // 9,
                )
                self._buffer = []
            self._client = None
            self._acks.clear()
            self.pending_acks = 0
            self._signal.set()
            await client.connection_pool.disconnect()

    async def open_channel(self) -> RedisChannel:
        self._require()
        channel = RedisChannel(self, self._next_channel)
        self._next_channel += 1
        self._channels[channel.channel_id] = channel
        return channel

    def forget_channel(self, channel: RedisChannel) -> bool:
        return self._channels.pop(channel.channel_id, None) is not None

    def wake(self) -> None:
        self._signal.set()

    # --- calling the script -------------------------------------------------------------------------

    async def call(self, op: str, *args: Any) -> Any:
        """Run one operation of the broker script, after this connection's buffered publishes and acks
        (all in one round trip)."""
        try:
            return (await self._send([(op, args)]))[0]
        except _Lost:
            self._lost = True
            self._require()  # raises, with the explanation
            raise

    async def flush(self, timeout: float | None = None) -> None:
        """Send the buffered publishes and acks now."""
        if self._buffer or self.pending_acks:
            await self._send([])

    async def _flush_publishes(self) -> None:
        # The linger timer (another thread in the sync API): publishes only, acks belong to their thread.
        if self._buffer:
            await self._send([], acks=False)

    async def _send(self, calls: list[tuple[str, Sequence[Any]]], acks: bool = True) -> list[Any]:
        """Send the buffered publishes, the buffered acks (unless ``acks`` is false), then ``calls`` (script
        operations) in one pipeline, in that order; return the calls' results. One pipeline at a time, so
        no operation of this connection overtakes a publish buffered before it. Refusals of buffered
        publishes are logged: nobody waits for them."""
        async with self._send_lock:
            client = self._require()
            with self._buffer_lock:
                buffered, self._buffer = self._buffer, []
            outbox = 0
            with _mapped():
                if buffered or (acks and self.pending_acks) or len(calls) > 1:
                    step = PUBLISH_CHUNK * 9
                    chunks = [buffered[i : i + step] for i in range(0, len(buffered), step)]
                    every = [("bpublish", (len(chunk) // 9, *chunk)) for chunk in chunks] + calls
                    try:
                        results = await self._pipeline(client, every, acks)
                    except RedisError:
                        if buffered:
                            logger.warning(
                                "kelp: %d buffered (unconfirmed) publishes may be lost", len(buffered) // 9
                            )
                        raise
                    outbox = self._buffered_results(results[: len(chunks)])
                    results = results[len(chunks) :]
                elif calls:
                    op, args = calls[0]
                    try:
                        results = [await client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)]
                    except NoScriptError:
                        results = [await self._reload_and_call(client, op, tuple(args))]
                else:
                    return []
                for (op, _), result in zip(calls, results):
                    if isinstance(result, Exception):
                        raise result
                    if op == "publish":
                        self.may_refuse = bool(result[4])
        if outbox:
            await self.flush_outbox()
        return results

    async def _pipeline(self, client: Any, calls: list[tuple[str, Sequence[Any]]], acks: bool) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        if acks:
            self._pipeline_acks(pipe)
        for op, args in calls:
            pipe.execute_command("EVALSHA", SHA, 1, self._key, op, *args)
        results = list(await pipe.execute(raise_on_error=False))[-len(calls) :] if calls else []
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis restarted (or SCRIPT FLUSH): nothing of the script ran, the acks did; once more.
            await client.execute_command("SCRIPT", "LOAD", SOURCE)
            pipe = client.pipeline(transaction=False)
            for op, args in calls:
                pipe.execute_command("EVALSHA", SHA, 1, self._key, op, *args)
            results = list(await pipe.execute(raise_on_error=False))
        return results

    def _buffered_results(self, results: list[Any]) -> int:
        """Log what the script refused of the buffered publishes; return the outbox length."""
        outbox = 0
        for result in results:
            if isinstance(result, Exception):
                logger.warning("kelp: buffered (unconfirmed) publishes were dropped: %s", result)
                continue
            _, refused, outbox, missing, refusing = result
            self.may_refuse = bool(refusing)
            for name in refused:
                logger.warning(
                    "kelp: queue %r refused a buffered message (x-overflow); without confirms it is "
                    "dropped, as RabbitMQ does",
                    _text(name),
                )
            for name in missing:
                self.exchanges.discard(_text(name))
                logger.warning(
                    "kelp: a buffered message was dropped: no exchange %r (the next publish to it raises)",
                    _text(name),
                )
        return int(outbox)

    async def _call_unbuffered(self, op: str, *args: Any) -> Any:
        """:meth:`call` without sending buffered acks: safe from the heartbeat thread."""
        client = self._require()
        with _mapped():
            try:
                return await client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)
            except NoScriptError:
                return await self._reload_and_call(client, op, args)

    async def _reload_and_call(self, client: Any, op: str, args: tuple[Any, ...]) -> Any:
        # Redis restarted (or SCRIPT FLUSH): scripts are not persisted, so load it again.
        await client.execute_command("SCRIPT", "LOAD", SOURCE)
        return await client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)

    # --- acks ---------------------------------------------------------------------------------------

    def queue_ack(self, queue: str, suffix: str, entry_id: bytes) -> None:
        key = f"{self._key}qs:{suffix}:{queue}"
        ids = self._acks.get(key)
        if ids is None:
            self._acks[key] = [entry_id]
        else:
            ids.append(entry_id)
        self.pending_acks += 1

    def _pipeline_acks(self, pipe: Any) -> None:
        acks, self._acks = self._acks, {}
        self.pending_acks = 0
        for key, ids in acks.items():
            pipe.execute_command("XACK", key, "g", *ids)
            pipe.execute_command("XDEL", key, *ids)

    # --- publishing and dead letters ---------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Buffer unconfirmed publishes (see the module docstring); route and store the others now, one
        script call per chunk, every chunk in one round trip."""
        if not envelopes:
            return []
        args: list[Any] = []
        exchanges = self.exchanges
        buffer = not (self.confirm_publish or self.may_refuse)
        for envelope in envelopes:
            if envelope.mandatory or envelope.exchange not in exchanges:
                buffer = False
            properties = envelope.properties
            ttl = expiration_ms(properties)
            args += (
                envelope.exchange,
                envelope.routing_key,
                headers_canon(envelope.headers),
                "1" if envelope.mandatory else "",
                int(properties.get("priority") or 0),
                "" if ttl is None else ttl,
                envelope.body,
                encode_meta(properties, envelope.headers, envelope.exchange, envelope.routing_key),
                "",
            )
        if buffer:
            self._require()
            with self._buffer_lock:
                first = not self._buffer
                self._buffer += args
                full = len(self._buffer) >= PUBLISH_BATCH * 9
            if full:
                await self.flush()
            elif first and self._linger is not None:
                self._linger.arm()
            return []
        step = PUBLISH_CHUNK * 9
        results = await self._send(
            [
                ("publish", (len(chunk) // 9, *chunk))
                for chunk in (args[i : i + step] for i in range(0, len(args), step))
            ]
        )
        exchanges.update(envelope.exchange for envelope in envelopes)  # the script checked they exist
        returned: list[Envelope] = []
        refused: list[str] = []
        outbox = 0
        for offset, (returned_indexes, refused_names, waiting, _, _) in zip(
            range(0, len(envelopes), PUBLISH_CHUNK), results
        ):
            returned += (envelopes[offset + int(index)] for index in returned_indexes)
            refused += (_text(name) for name in refused_names)
            outbox = waiting
        if outbox:
            await self.flush_outbox()
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish): "
                "message not enqueued there"
            )
        return returned

    async def flush_outbox(self) -> None:
        """Rewrite and route the dead letters waiting in the outbox (any connection may do it, once each)."""
        for _ in range(100):
            raw = await self._call_unbuffered("outbox", 100)
            if not raw:
                return
            args: list[Any] = []
            count = 0
            now = time.time()
            for i in range(0, len(raw), 8):
                entry = raw[i : i + 8]
                try:
                    args += _dead_letter_args(entry, now)
                except Exception:
                    # Whatever is wrong with it, one entry never blocks the outbox: "x" removes it.
                    logger.exception("kelp: dropped an unreadable dead letter %r from the outbox", entry[0])
                    args += ("", "", "", "x", 0, "", b"", b"", entry[0])
                count += 1
            await self._call_unbuffered("publish", count, *args)

    # --- consuming -----------------------------------------------------------------------------------

    async def drain(self, timeout: float | None) -> list[Delivery]:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self._require()
            if self._cancelled:
                raise queue_deleted(*self._cancelled.pop(0))
            self._signal.clear()
            specs = self._claim_specs()
            watch: list[Any] = []
            if specs:
                deliveries, watch = await self._claim(specs)
                if deliveries:
                    return deliveries
                if self._cancelled:
                    continue
            elif self.pending_acks or self._buffer:
                await self.flush()
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no message arrived within the timeout")
            wait = WAIT_CAP if remaining is None else min(remaining, WAIT_CAP)
            if watch:
                streams = dict(zip(watch[0::2], watch[1::2]))  # a queue consumed twice is watched once
                keys, ids = list(streams), list(streams.values())
                with _mapped():
                    await self._require().execute_command(
                        "XREAD", "COUNT", 1, "BLOCK", max(1, int(wait * 1000)), "STREAMS", *keys, *ids
                    )
            else:
                await self._signal.wait(wait)

    def _claim_specs(self) -> list[tuple[RedisChannel, _Consumer, int]]:
        specs = []
        for channel in self._channels.values():
            if not channel.consumers:
                continue
            budget = channel.prefetch_global - len(channel.unacked) if channel.prefetch_global else None
            for consumer in channel.consumers.values():
                room = consumer.prefetch - consumer.unacked if consumer.prefetch else MAX_CLAIM
                if budget is not None:
                    room = min(room, budget)
                    budget -= max(room, 0)
                # A full consumer is asked about too (room 0): the answer says whether its queue still exists.
                specs.append((channel, consumer, max(room, 0)))
        return specs

    async def _claim(
        self, specs: list[tuple[RedisChannel, _Consumer, int]]
    ) -> tuple[list[Delivery], list[Any]]:
        args: list[Any] = []
        for index, (_, consumer, room) in enumerate(specs):
            args += (consumer.queue, room, _flag(consumer.no_ack), index)
        result = await self.call("claim", self.connection_id, len(specs), *args)
        deliveries: list[Delivery] = []
        watch: list[Any] = []
        i, end = 1, len(result)
        while i < end:
            item = result[i]
            if item == b"watch":
                watch = result[i + 1 :]
                break
            if item == b"gone":  # the queue was deleted: cancel the consumer, as RabbitMQ's basic.cancel
                channel, consumer, _ = specs[int(result[i + 1])]
                if channel.consumers.pop(consumer.tag, None) is not None:
                    self._cancelled.append((channel.channel_id, consumer.tag, consumer.queue))
                i += 2
                continue
            channel, consumer, _ = specs[int(item)]
            _, suffix, entry_id, body, meta, count = result[i : i + 6]
            delivery = channel._deliver(
                consumer, consumer.queue, _text(suffix), entry_id, body, meta, count, consumer.no_ack
            )
            if delivery is not None:
                deliveries.append(delivery)
            i += 6
        if self.malformed:
            await self.quarantine()
        if result[0]:
            await self.flush_outbox()
        return deliveries, watch

    async def quarantine(self) -> None:
        """Take the malformed entries this connection claimed out of their queues: rejected without
        requeue, so the script dead-letters them when the queue has a dead-letter exchange (the outbox
        then routes them as kelp._broker.malformed says); otherwise dropped with an ERROR log."""
        items, self.malformed = self.malformed, []
        client = self._require()
        store = f"redis prefix {self.prefix!r}"
        args: list[Any] = []
        for queue, suffix, entry_id, no_ack, problem in items:
            if no_ack:
                report_dropped(store, queue, _text(entry_id), problem, "it was delivered with no_ack")
                continue
            with _mapped():
                dlx = await client.execute_command("HGET", f"{self._key}q:{queue}", "dlx")
            if dlx is None:
                report_dropped(store, queue, _text(entry_id), problem)
            args += (queue, suffix, entry_id)
        if args:
            outbox = await self.call("settle", self.connection_id, "0", len(args) // 3, *args)
            if outbox:
                await self.flush_outbox()

    async def _beat(self) -> None:
        """Heartbeat: stay alive, release one dead connection, expire what is due, route dead letters."""
        for _ in range(10):
            outbox, lost, more = await self._call_unbuffered("beat", self.connection_id, self._liveness_ms)
            if lost:
                self._lost = True
                self._signal.set()
                return
            if outbox:
                await self.flush_outbox()
            if more != 2:
                return

    # --- inspection ---------------------------------------------------------------------------------

    async def queue_stats(self) -> list[tuple[str, int, int, int]]:
        raw = await self.call("stats")
        return [
            (_text(raw[i]), int(raw[i + 1]), int(raw[i + 2]), int(raw[i + 3])) for i in range(0, len(raw), 4)
        ]

    async def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        raw = await self.call("bindings")
        out = []
        for i in range(0, len(raw), 2):
            kind, destination, routing_key, arguments, *_ = json.loads(raw[i + 1])
            out.append((_text(raw[i]), kind, destination, routing_key, decode_arguments(arguments)))
        return out
