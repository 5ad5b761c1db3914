# Generated from src/kelp/aio/transport/redis.py by scripts/unasync.py; do not edit.
"""``redis://`` and ``rediss://``: kelp's broker on Redis streams, with RabbitMQ's semantics.

``redis://[user:password@]host[:port][/db][?prefix=kelp&liveness=10]`` (``rediss://`` for TLS). Every
declaration (exchanges, queues, bindings, arguments) is stored in Redis under the prefix, so all processes
sharing a prefix see one topology; different prefixes are separate brokers.

What happens to a message:

* **publish** routes and stores in one server-side Lua function (:mod:`kelp._broker.redis.script`): the
  matched queues get their copies atomically, or none does. Every operation of the connection goes, in
  order, through one Redis connection, the *pipe* (:mod:`kelp.transport._redis_pipe`). A persistent
  message's call is written to the socket before ``publish`` returns, with ``CLIENT REPLY OFF`` (so Redis
  reads a killed publisher's socket to the end: nothing written is lost); a ``confirm`` call settles the
  outbox: before the next operation that needs a reply, every 128 KiB, when the outbox is full
  (``max_unconfirmed`` messages, ``max_unconfirmed_bytes`` of bodies), by :meth:`RedisTransport.flush`
  and at close. A refusal it reports (a full ``reject-publish`` queue, an exchange deleted meanwhile) is
  raised as :class:`~kelp.exceptions.MessageNacked` naming the messages, by the next publish, flush or
  close. A
  transient message may wait up to ``LINGER`` in the connection (``PUBLISH_BATCH`` are written together):
  the fast path. With ``confirm_publish`` (URL query or transport option), and always for a ``mandatory``
  message or one to an exchange this connection has not seen exist, ``publish`` waits for its own reply:
  Redis has the message (in memory, and on disk as its persistence says: see ``docs/transports.md``),
  refusals raise and unroutable ``mandatory`` messages are returned. After a lost connection,
  :meth:`RedisTransport.unconfirmed` is what the library publishes again (at-least-once).
* **queues** are Redis streams (one per priority level, plus one per level for requeued messages, which
  go first) read through one consumer group. A delivery moves the entry into the group's pending list
  under this connection's name in the same script that reads it, so there is no moment when a message is
  neither in the queue nor pending: a crash never loses one.
* **ack** removes the entry (XACK + XDEL). Acks are sent in batches, with the connection's next operation
  (its next drain, publish, get...) or when the batch is full; a process that dies before that gets those
  messages redelivered (at-least-once, as in AMQP). **reject** / **requeue** / channel close put entries
  back at the head of their queue, flagged ``redelivered``; ``reject(requeue=False)`` dead-letters.
* **liveness**: every connection refreshes a heartbeat (an asyncio task in the async API, a daemon
  thread in the sync one) every ``CLIENT_CHECK`` seconds and checks that the other connections' Redis
  clients are still listed (``CLIENT LIST ID``): one whose client is gone (its process died, its socket
  closed) is released at once: its pending messages are redelivered, flagged, to anyone, its consumers and
  exclusive queues go. A connection silent for ``liveness`` seconds (default 10) with its client still
  connected (a hung process) is released the same way by the next live connection to beat. A consumer busy
  for minutes keeps its messages as long as its process beats; with asyncio that means its callbacks must
  not block the event loop that long.
* **prefetch** is honoured exactly: a claim never reads more than the consumers' free windows.
* **drain** waits with a bounded ``XREAD BLOCK`` on the consumed streams (never more than half a second
  per call, and never past the next time something becomes due), so timeouts are respected and the async
  API never blocks its event loop.
* **delayed** messages (``countdown``/``eta``) are routed at publish and held per queue in a sorted set by
  due time; the script moves them to the queue's streams when a claim, get or heartbeat finds them due
  (a draining connection wakes for the next due time), so they are never delivered early and cost no
  prefetch slot. ``cancel_delayed`` removes them by message id. They persist as the rest of the data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from redis import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from kelp._backend import Signal, monotonic
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
from kelp._broker.redis.script import FUNCTION, LIBRARY, SHA, SOURCE
from kelp._broker.redis.ticker import ThreadLinger as Linger
from kelp._broker.redis.ticker import ThreadTicker as Ticker
from kelp._broker.redis.wire import ThreadWire as Wire
from kelp._envelope import Delivery, Envelope, QueueInfo, QueueStats
from kelp._options import integer_option, seconds_option
from kelp.exceptions import (
    AccessRefused,
    MessageNacked,
    NotFound,
    OperationalError,
    PreconditionFailed,
    ResourceLocked,
    UsageError,
)
from kelp.routing import InvalidXMatch, validate_exchange_type
from kelp.transport._redis_pipe import CALL, PUBLISH, Pipe, Slot
from kelp.transport.base import (
    DEFAULT_IMPLEMENTS,
    Implements,
    Transport,
    TransportChannel,
    package_version,
    queue_deleted,
)

__all__ = ["RedisChannel", "RedisTransport"]

logger = logging.getLogger("kelp.transport.redis")

#: Deliveries one claim may take for a consumer without a prefetch limit.
MAX_CLAIM = 1000
#: The longest single blocking wait in drain: local events (a new consumer, a freed window) are noticed
#: within this time even while a wait is in progress.
WAIT_CAP = 0.5
#: How late Redis may end a blocking command's timeout: it checks them at its server tick (hz 10).
SERVER_TICK = 0.1
#: Acks buffered before they are sent without waiting for the connection's next operation.
ACK_BATCH = 512
#: Envelopes per script call in a published batch (all calls of a batch share one round trip).
PUBLISH_CHUNK = 500
#: The script arguments of one published envelope (see lua_ops: publish).
PUBLISH_ARGS = 11
#: Transient publishes buffered before the publisher writes them itself.
PUBLISH_BATCH = 256
#: Seconds a transient publish waits in the buffer at most when the publisher pauses.
LINGER = 0.001
#: Default bounds of the outbox (publishes written, reply not read yet): ``max_unconfirmed`` envelopes,
#: ``max_unconfirmed_bytes`` of bodies. A publish that would overflow it reads replies first.
MAX_UNCONFIRMED = 10_000
MAX_UNCONFIRMED_BYTES = 32 * 1024 * 1024
#: Seconds between two heartbeats; each also checks that the other connections' clients are still
#: connected to Redis, so a killed process's messages come back within about this time.
CLIENT_CHECK = 0.5
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
    "XMATCH": InvalidXMatch,
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


def _positive(query: Mapping[str, Any], options: Mapping[str, Any], name: str, default: int) -> int:
    return integer_option("redis", name, query.get(name, options.get(name, default)), 1, 2**62)


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
        return ("", "", "", "x", 0, "", b"", b"", entry_id, "", "")
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
        "",
        "",
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

    def declare_exchange(
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
            self._transport.call("xdecl", name, "", "", "", "", "", "", "1")
            self._transport.exchanges.add(name)
            return
        check_name("exchange", name, passive)
        validate_exchange_type(type)
        alternate = (arguments or {}).get("alternate-exchange")
        self._transport.call(
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

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if not name or name.startswith("amq."):
            raise AccessRefused(f"operation not permitted on the default or 'amq.*' exchange '{name}'")
        self._transport.exchanges.discard(name)
        self._transport.call("xdel", name, _flag(if_unused))

    def declare_queue(
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
            result = transport.call("qdecl", transport.connection_id, name, "", "", "", "", "1")
            return QueueInfo(name, int(result[1]), int(result[2]))
        if name:
            check_name("queue", name, passive)
        args = QueueArgs.parse(arguments)
        name = name or generated_queue_name()

        def optional(value: int | None) -> str:
            return "" if value is None else str(value)

        result = transport.call(
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

    def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        transport = self._transport
        return int(transport.call("qdel", transport.connection_id, name, _flag(if_unused), _flag(if_empty)))

    def purge_queue(self, name: str) -> int:
        return int(self._transport.call("purge", self._transport.connection_id, name))

    def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        member, rule_error = self._member(kind, destination, source, routing_key, arguments)
        self._transport.call(
            "bind", self._transport.connection_id, kind, destination, source, routing_key, member, rule_error
        )

    def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        member, _ = self._member(kind, destination, source, routing_key, arguments)
        self._transport.call(
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

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return self._transport.publish(envelopes)

    def qos(self, prefetch_count: int, global_: bool) -> None:
        if global_:
            self.prefetch_global = prefetch_count
        else:
            self.prefetch = prefetch_count
            for consumer in self.consumers.values():
                consumer.prefetch = prefetch_count
        self._transport.wake()

    def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        consumer_tag = consumer_tag or tag("amq.ctag-")
        if consumer_tag in self.consumers:
            raise UsageError(f"consumer tag {consumer_tag!r} is already in use on this channel")
        key = f"{self.channel_id}:{consumer_tag}"
        self._transport.call("consume", self._transport.connection_id, queue, key)
        self.consumers[consumer_tag] = _Consumer(consumer_tag, queue, key, no_ack, self.prefetch)
        self._transport.wake()
        return consumer_tag

    def cancel(self, consumer_tag: str) -> None:
        consumer = self.consumers.pop(consumer_tag, None)
        if consumer is not None and self._transport.is_connected:  # a released connection has no consumers
            self._transport.call("cancel", self._transport.connection_id, consumer.key)

    def get(self, queue: str, no_ack: bool) -> Delivery | None:
        transport = self._transport
        result = transport.call("get", transport.connection_id, queue, _flag(no_ack))
        if result[0]:
            transport.flush_outbox()
        while len(result) >= 7:
            _, ready, suffix, entry_id, body, meta, deliveries = result
            delivery = self._deliver(
                None, queue, _text(suffix), entry_id, body, meta, deliveries, no_ack, int(ready)
            )
            if delivery is not None:
                return delivery
            # A malformed entry: it leaves the queue, and the next message is taken.
            transport.quarantine()
            result = transport.call("get", transport.connection_id, queue, _flag(no_ack))
            if result[0]:
                transport.flush_outbox()
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

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        transport = self._transport
        for item in self._settle(delivery_tag, multiple):
            if item.consumer is not None:
                item.consumer.unacked -= 1
            transport.queue_ack(item.queue, item.suffix, item.entry_id)
        transport.wake()
        if transport.pending_acks >= ACK_BATCH:
            transport.send_buffered()

    def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        self._settle_remote(self._settle(delivery_tag, multiple), requeue)

    def recover(self, requeue: bool) -> None:
        """Requeue every unacked delivery of the channel (AMQP basic.recover; kelp always requeues)."""
        self._settle_remote(self._settle(0, True), True)

    def _settle_remote(self, items: list[_Unacked], requeue: bool) -> None:
        if not items:
            return
        args: list[Any] = []
        for item in items:
            if item.consumer is not None:
                item.consumer.unacked -= 1
            args += (item.queue, item.suffix, item.entry_id)
        transport = self._transport
        outbox = transport.call("settle", transport.connection_id, _flag(requeue), len(items), *args)
        transport.wake()
        if outbox:
            transport.flush_outbox()

    def _settle(self, delivery_tag: int, multiple: bool) -> list[_Unacked]:
        if multiple:
            tags = (
                sorted(t for t in self.unacked if t <= delivery_tag) if delivery_tag else sorted(self.unacked)
            )
            return [self.unacked.pop(t) for t in tags]
        item = self.unacked.pop(delivery_tag, None)
        if item is None:
            raise PreconditionFailed(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        return [item]

    def cancel_delayed(self, message_id: str) -> int:
        # Sent after this connection's earlier publishes on the same pipe, so it finds them.
        return int(self._transport.call("dcancel", message_id))

    def close(self) -> None:
        transport = self._transport
        if transport.forget_channel(self) and transport.is_connected:
            for consumer_tag in list(self.consumers):
                self.cancel(consumer_tag)
            self._settle_remote(self._settle(0, True), True)


class RedisTransport(Transport):
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {
            "prefix",
            "liveness",
            "socket_timeout",
            "confirm_publish",
            "max_unconfirmed",
            "max_unconfirmed_bytes",
        }
    )

    driver_type: ClassVar[str] = "redis"
    driver_name: ClassVar[str] = "redis"
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(heartbeats=True, delayed_delivery=True)

    def driver_version(self) -> str:
        return package_version("redis")

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
        self._beat_interval = min(CLIENT_CHECK, liveness / 4)
        self._socket_timeout = seconds_option(scheme, "socket_timeout", query.get("socket_timeout", 30.0))
        self._db = integer_option(scheme, "database (the URL's path)", url.path or "0", 0, 2**31 - 1)
        confirm = str(query.get("confirm_publish", "")).lower() in _TRUE
        self.confirm_publish = confirm or bool(options.get("confirm_publish"))
        self.max_unconfirmed = _positive(query, options, "max_unconfirmed", MAX_UNCONFIRMED)
        self.max_unconfirmed_bytes = _positive(query, options, "max_unconfirmed_bytes", MAX_UNCONFIRMED_BYTES)
        #: Exchanges this connection saw exist: a publish to any other waits for the script's answer, so
        #: a missing exchange raises NotFound from that publish.
        self.exchanges: set[str] = {""}
        #: Transient publishes not written yet (the fast path): their envelopes and script arguments.
        self._buffer: list[Envelope] = []
        self._buffer_args: list[Any] = []
        self._buffer_lock = threading.Lock()  # the publisher appends, the linger timer takes
        self._linger: Linger | None = None
        #: Refusals read from the replies of pipelined publishes, raised by the next publish/flush/close.
        self._refused: list[tuple[str, list[Envelope]]] = []
        self._dead_letters = False  # a reply said dead letters wait in the broker's outbox
        self.connection_id = secrets.token_hex(8)
        #: Claimed entries whose meta kelp cannot read: (queue, suffix, id, no_ack, problem); see quarantine.
        self.malformed: list[tuple[str, str, bytes, bool, str]] = []
        self._client: Any = None
        self._pipe: Pipe | None = None
        #: How the pipe calls the script: its function (Redis >= 7), or else EVALSHA.
        self._script: tuple[str, str] = ("FCALL", FUNCTION)
        self._lost = False
        self._channels: dict[int, RedisChannel] = {}
        self._next_channel = 1
        self._acks: dict[tuple[str, str], list[bytes]] = {}  # (queue, stream suffix) -> entry ids
        self.pending_acks = 0
        self._signal = Signal()
        #: When the script last said something becomes due (monotonic), for drain's wait.
        self._next_sweep: float | None = None
        self._ticker: Ticker | None = None
        # (channel id, consumer tag, queue) of consumers whose queue was deleted, not yet reported
        self._cancelled: list[tuple[int, str, str]] = []
        self._client_check = True  # off when the server refuses CLIENT LIST

    # --- connection -------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        pipe = self._pipe
        return self._client is not None and not self._lost and pipe is not None and pipe.broken is None

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

    def _require_pipe(self) -> Pipe:
        self._require()
        pipe = self._pipe
        assert pipe is not None
        if pipe.broken is not None:
            raise OperationalError(f"redis: the connection was lost ({pipe.broken}); reconnect")
        return pipe

    def connect(self, timeout: float | None) -> None:
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
        wire = Wire(client)
        pipe = Pipe(
            wire,
            wire.pack("FUNCTION", "LOAD", "REPLACE", LIBRARY),
            wire.pack("FCALL", FUNCTION, 1, self._key, "confirm", self.connection_id),
            self._on_confirm,
            self.max_unconfirmed,
            self.max_unconfirmed_bytes,
        )
        try:
            with _mapped():
                wire.open()
                # The pipe's connection is this connection's identity: a liveness check that no longer
                # finds its client id in CLIENT LIST releases what it holds (see _check_clients).
                hello = [Slot(CALL) for _ in range(4)]
                pipe.send(
                    list,
                    [
                        (wire.pack("CLIENT", "SETNAME", f"kelp-{self.connection_id}"), hello[0]),
                        (wire.pack("CLIENT", "ID"), hello[1]),
                        (wire.pack("SCRIPT", "LOAD", SOURCE), hello[2]),
                        (wire.pack("FUNCTION", "LOAD", LIBRARY), hello[3]),
                    ],
                )
                for slot in hello[:3]:
                    pipe.wait(slot)
                if isinstance(hello[2].value, Exception):
                    raise hello[2].value
                # CLIENT may be refused (an ACL, an old or managed server): then only missed heartbeats
                # release this connection's messages if its process dies.
                client_id = None if isinstance(hello[1].value, Exception) else int(hello[1].value)
                loaded = pipe.wait(hello[3])
                if isinstance(loaded, ResponseError) and "already exists" not in str(loaded):
                    # Redis < 7 has no functions: every call runs the script (slower: its whole body
                    # runs each time).
                    self._script = ("EVALSHA", SHA)
                    pipe.script_load = wire.pack("SCRIPT", "LOAD", SOURCE)
                    pipe.confirm = wire.pack("EVALSHA", SHA, 1, self._key, "confirm", self.connection_id)
                outbox = client.execute_command(
                    "EVALSHA", SHA, 1, self._key, "init", self.connection_id, self._liveness_ms
                )
                if client_id is not None:
                    client.execute_command("HSET", self._key + "clients", self.connection_id, client_id)
        except BaseException:
            wire.close()
            client.connection_pool.disconnect()
            raise
        self._client = client
        self._pipe = pipe
        self._lost = False
        self._ticker = Ticker(self._beat_interval, self._beat, f"kelp-redis-heartbeat-{self.connection_id}")
        self._ticker.start()
        self._linger = Linger(LINGER, self._flush_publishes, f"kelp-redis-linger-{self.connection_id}")
        if outbox:
            self.flush_outbox()

    @property
    def _liveness_ms(self) -> int:
        return int(self.liveness * 1000)

    def close(self) -> None:
        """Release everything this connection holds (unacked messages go back, flagged) and disconnect.
        Publishes still unconfirmed are waited for (the reap call comes after them on the pipe); a refusal
        found then is raised once the connection is closed."""
        client = self._client
        if client is None:
            return
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.stop()
        self._channels.clear()
        try:
            if self.is_connected:
                for _ in range(10_000):  # the first call writes the buffered publishes and acks first
                    if not self.call("reap", self.connection_id):
                        break
        except OperationalError:
            # Redis is unreachable: the other connections release our messages when they find our client
            # gone from CLIENT LIST (or after liveness).
            pass
        finally:
            unconfirmed = len(self.unconfirmed())
            if unconfirmed:  # Connection republishes them after a reconnect, or logs them at close
                logger.debug(
                    "kelp: %d published messages were never confirmed: the connection closed unreachable",
                    unconfirmed,
                )
            self._buffer, self._buffer_args = [], []
            pipe, self._pipe = self._pipe, None
            self._client = None
            self._acks.clear()
            self.pending_acks = 0
            self._signal.set()
            if pipe is not None:
                pipe.wire.close()
            client.connection_pool.disconnect()
        self._raise_refused()

    def open_channel(self) -> RedisChannel:
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

    def call(self, op: str, *args: Any) -> Any:
        """Run one operation of the broker script, written after this connection's buffered publishes
        and acks on the pipe (so it sees them), and return its reply."""
        try:
            return (self._send([(op, args)]))[0]
        except _Lost:
            self._lost = True
            self._require()  # raises, with the explanation
            raise

    def flush(self, timeout: float | None = None) -> None:
        """The barrier: write the buffered publishes and acks, then read the reply of every earlier
        publish. Raises MessageNacked for refusals not reported yet, TimeoutError when ``timeout``
        passes first (the rest stays in the outbox), OperationalError when the connection is gone."""
        if self._client is None:
            if self._refused:
                self._raise_refused()
            return
        pipe = self._require_pipe()
        deadline = None if timeout is None else monotonic() + timeout
        self._send([])
        with _mapped():
            pipe.wait_all(deadline)
        if self._dead_letters:
            self._dead_letters = False
            self.flush_outbox()
        self._raise_refused()

    def unconfirmed(self) -> list[Envelope]:
        """Written but not confirmed (the pipe's outbox), then the transient publishes not yet written."""
        pipe = self._pipe
        return (pipe.unconfirmed() if pipe is not None else []) + list(self._buffer)

    def send_buffered(self) -> None:
        """Write the buffered transient publishes and acks now, without waiting for replies."""
        self._send([])

    def _flush_publishes(self) -> None:
        # The linger timer (another thread in the sync API): publishes only, acks belong to their thread.
        if self._buffer and self.is_connected:
            self._send([], acks=False)

    def _take_buffer(self, pipe: Pipe) -> list[tuple[list[bytes], Slot | None]]:
        """The buffered transient publishes as quiet script calls (called under the write lock)."""
        if not self._buffer:
            return []
        with self._buffer_lock:
            envelopes, self._buffer = self._buffer, []
            args, self._buffer_args = self._buffer_args, []
        return self._quiet_publishes(pipe, envelopes, args)

    def _quiet_publishes(
        self, pipe: Pipe, envelopes: list[Envelope], args: list[Any]
    ) -> list[tuple[list[bytes], Slot | None]]:
        commands: list[tuple[list[bytes], Slot | None]] = []
        for i in range(0, len(envelopes), PUBLISH_CHUNK):
            chunk = envelopes[i : i + PUBLISH_CHUNK]
            slot = Slot(PUBLISH, chunk, sum(len(envelope.body) for envelope in chunk))
            packed = pipe.wire.pack(
                *self._script,
                1,
                self._key,
                "opub",
                self.connection_id,
                len(chunk),
                *args[i * PUBLISH_ARGS : (i + len(chunk)) * PUBLISH_ARGS],
            )
            commands.append((packed, slot))
        return commands

    def _send(self, calls: list[tuple[str, Sequence[Any]]], acks: bool = True) -> list[Any]:
        """Write the buffered publishes, the buffered acks (unless ``acks`` is false), then ``calls``
        (script operations) on the pipe, in that order; read and return the calls' replies."""
        pipe = self._require_pipe()
        slots = [Slot(CALL) for _ in calls]

        def quiet() -> list[tuple[list[bytes], Slot | None]]:
            commands = self._take_buffer(pipe)
            if acks and self.pending_acks:
                commands += self._ack_commands(pipe)
            return commands

        with _mapped():
            pipe.send(
                quiet,
                [
                    (pipe.wire.pack(*self._script, 1, self._key, op, *args), slot)
                    for (op, args), slot in zip(calls, slots)
                ],
            )
            results = [pipe.wait(slot) for slot in slots]
        for result in results:
            if isinstance(result, Exception):
                with _mapped():
                    raise result
        if self._dead_letters:
            self._dead_letters = False
            self.flush_outbox()
        return results

    def _on_confirm(self, window: list[Slot], reply: Any) -> None:
        """A confirm of the quiet publishes ``window``: remember what the broker refused, to raise it
        from the next publish, flush or close."""
        if int(reply[1]):
            self._dead_letters = True
        for raw in reply[2:]:
            k, nacked, refused, missing = json.loads(raw)
            envelopes = window[int(k) - 1].envelopes
            missing = missing or []  # an empty Lua table is encoded as {}
            for name in missing:
                self.exchanges.discard(name)
            reasons = [f"no exchange {sorted(set(missing))}"] if missing else []
            if refused:
                reasons.append(f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish)")
            self._refused.append(("; ".join(reasons), [envelopes[int(index)] for index in nacked or []]))

    def _raise_refused(self) -> None:
        if not self._refused:
            return
        refused, self._refused = self._refused, []
        reasons = sorted({reason for reason, _ in refused})
        envelopes = [envelope for _, batch in refused for envelope in batch]
        raise MessageNacked(
            f"{len(envelopes)} published message(s) not enqueued: {'; '.join(reasons)}", envelopes=envelopes
        )

    def _call_unbuffered(self, op: str, *args: Any) -> Any:
        """One script call on its own connection of the pool (the heartbeat's, the dead letters'): it
        neither waits behind nor reorders the pipe."""
        client = self._require()
        with _mapped():
            try:
                return client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)
            except NoScriptError:
                return self._reload_and_call(client, op, args)

    def _reload_and_call(self, client: Any, op: str, args: tuple[Any, ...]) -> Any:
        # Redis restarted (or SCRIPT FLUSH): scripts are not persisted, so load it again.
        client.execute_command("SCRIPT", "LOAD", SOURCE)
        return client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)

    # --- acks ---------------------------------------------------------------------------------------

    def queue_ack(self, queue: str, suffix: str, entry_id: bytes) -> None:
        key = (queue, suffix)
        ids = self._acks.get(key)
        if ids is None:
            self._acks[key] = [entry_id]
        else:
            ids.append(entry_id)
        self.pending_acks += 1

    def _ack_commands(self, pipe: Pipe) -> list[tuple[list[bytes], Slot | None]]:
        acks, self._acks = self._acks, {}
        self.pending_acks = 0
        # One script call (XACK + XDEL per stream, and each queue's count of acks), its reply unread.
        args: list[Any] = []
        for (queue, suffix), ids in acks.items():
            args += (queue, suffix, len(ids), *ids)
        return [(pipe.wire.pack(*self._script, 1, self._key, "ack", *args), None)]

    # --- publishing and dead letters ---------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Write the script call routing and storing the batch (one per chunk) and return without reading
        its reply (see the module docstring); transient messages may wait in the buffer instead. With
        ``confirm_publish``, a ``mandatory`` message, or an exchange this connection has not seen exist,
        wait for the reply: refusals raise MessageNacked, unroutable mandatory messages are returned."""
        if not envelopes:
            return []
        pipe = self._require_pipe()
        self._raise_refused()
        envelopes = list(envelopes)
        args: list[Any] = []
        exchanges = self.exchanges
        wait = self.confirm_publish
        transient = True
        for envelope in envelopes:
            if envelope.mandatory or envelope.exchange not in exchanges:
                wait = True
            properties = envelope.properties
            if properties.get("delivery_mode") != 1:
                transient = False
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
                "" if envelope.due is None else math.ceil(envelope.due * 1000),  # never early
                "" if envelope.due is None else properties.get("message_id") or "",
            )
        if transient and not wait:
            with self._buffer_lock:
                first = not self._buffer
                self._buffer += envelopes
                self._buffer_args += args
                full = len(self._buffer) >= PUBLISH_BATCH
            if full:
                self._send([], acks=False)
            elif first and self._linger is not None:
                self._linger.arm()
            return []
        if not wait:
            quiet = self._quiet_publishes(pipe, envelopes, args)
            with _mapped():
                pipe.make_room(len(envelopes), sum(len(envelope.body) for envelope in envelopes))
            self._raise_refused()

            def commands() -> list[tuple[list[bytes], Slot | None]]:
                taken = self._take_buffer(pipe)
                if self.pending_acks:
                    taken += self._ack_commands(pipe)
                return taken + quiet

            with _mapped():
                pipe.send(commands, [])
            return []
        own = [
            (
                pipe.wire.pack(
                    *self._script,
                    1,
                    self._key,
                    "publish",
                    len(chunk),
                    *args[i * PUBLISH_ARGS : (i + len(chunk)) * PUBLISH_ARGS],
                ),
                Slot(CALL, chunk),
            )
            for i, chunk in (
                (i, envelopes[i : i + PUBLISH_CHUNK]) for i in range(0, len(envelopes), PUBLISH_CHUNK)
            )
        ]
        with _mapped():
            pipe.send(lambda: self._take_buffer(pipe), own)
            results = [pipe.wait(slot) for _, slot in own]
        returned: list[Envelope] = []
        refused: list[Envelope] = []
        reasons: set[str] = set()
        failure: Exception | None = None
        for (_, slot), result in zip(own, results):
            if isinstance(result, Exception):
                failure = failure or result
                continue
            returned_indexes, refused_names, _, _, _, nacked = result
            returned += (slot.envelopes[int(index)] for index in returned_indexes)
            refused += (slot.envelopes[int(index)] for index in nacked)
            reasons.update(_text(name) for name in refused_names)
            if int(result[2]):
                self._dead_letters = True
        if failure is not None:
            with _mapped():
                raise failure
        exchanges.update(envelope.exchange for envelope in envelopes)  # the script checked they exist
        if self._dead_letters:
            self._dead_letters = False
            self.flush_outbox()
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(reasons)} full (x-overflow reject-publish): message not enqueued there",
                envelopes=refused,
            )
        return returned

    def flush_outbox(self) -> None:
        """Rewrite and route the dead letters waiting in the outbox (any connection may do it, once each)."""
        for _ in range(100):
            raw = self._call_unbuffered("outbox", 100)
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
                    args += ("", "", "", "x", 0, "", b"", b"", entry[0], "", "")
                count += 1
            self._call_unbuffered("publish", count, *args)

    # --- consuming -----------------------------------------------------------------------------------

    def drain(self, timeout: float | None) -> list[Delivery]:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self._require()
            if self._cancelled:
                raise queue_deleted(*self._cancelled.pop(0))
            self._signal.clear()
            specs = self._claim_specs()
            watch: list[Any] = []
            if specs:
                deliveries, watch = self._claim(specs)
                if deliveries:
                    return deliveries
                if self._cancelled:
                    continue
            elif self.pending_acks or self._buffer:
                self.send_buffered()
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no message arrived within the timeout")
            wait = WAIT_CAP if remaining is None else min(remaining, WAIT_CAP)
            if self._next_sweep is not None:
                # Something becomes due (a delayed message, an expiry): claim again then, not later.
                # Redis ends a BLOCK only at its next server tick after the timeout (up to 100 ms
                # late), so the last stretch before the due time is slept here instead.
                until, self._next_sweep = self._next_sweep - monotonic(), None
                if until < wait:
                    if until <= SERVER_TICK:
                        self._signal.wait(max(0.0, until))
                        continue
                    wait = until - SERVER_TICK
            if watch:
                streams = dict(zip(watch[0::2], watch[1::2]))  # a queue consumed twice is watched once
                keys, ids = list(streams), list(streams.values())
                with _mapped():
                    self._require().execute_command(
                        "XREAD", "COUNT", 1, "BLOCK", max(1, int(wait * 1000)), "STREAMS", *keys, *ids
                    )
            else:
                self._signal.wait(wait)

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

    def _claim(self, specs: list[tuple[RedisChannel, _Consumer, int]]) -> tuple[list[Delivery], list[Any]]:
        args: list[Any] = []
        for index, (_, consumer, room) in enumerate(specs):
            args += (consumer.queue, room, _flag(consumer.no_ack), index)
        result = self.call("claim", self.connection_id, len(specs), *args)
        deliveries: list[Delivery] = []
        watch: list[Any] = []
        i, end = 1, len(result)
        while i < end:
            item = result[i]
            if item == b"watch":
                next_ms = int(result[i + 1])
                if next_ms >= 0:
                    self._next_sweep = monotonic() + next_ms / 1000
                watch = result[i + 2 :]
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
            self.quarantine()
        if result[0]:
            self.flush_outbox()
        return deliveries, watch

    def quarantine(self) -> None:
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
                dlx = client.execute_command("HGET", f"{self._key}q:{queue}", "dlx")
            if dlx is None:
                report_dropped(store, queue, _text(entry_id), problem)
            args += (queue, suffix, entry_id)
        if args:
            outbox = self.call("settle", self.connection_id, "0", len(args) // 3, *args)
            if outbox:
                self.flush_outbox()

    def _beat(self) -> None:
        """Heartbeat: stay alive, release dead connections, expire what is due, route dead letters."""
        for _ in range(10):
            outbox, lost, more = self._call_unbuffered("beat", self.connection_id, self._liveness_ms)
            if lost:
                self._lost = True
                self._signal.set()
                return
            if outbox:
                self.flush_outbox()
            if more != 2:
                break
        self._check_clients()

    def _check_clients(self) -> None:
        """Release the connections whose Redis client is gone: their process died (or their socket
        closed), so their unacked messages go back now rather than after ``liveness``. A process that
        is alive but silent keeps its client listed: only its missed heartbeats release it."""
        client = self._require()
        if not self._client_check:
            return
        with _mapped():
            known = client.hgetall(self._key + "clients")
            ids = {int(client_id): _text(conn) for conn, client_id in known.items()}
            if not ids:
                return
            try:
                listed = client.client_list(client_id=list(ids))
            except ResponseError as exc:  # CLIENT LIST ID needs Redis 6.2 and the right to list clients
                logger.warning(
                    "kelp: cannot list redis clients (%s): dead connections wait for liveness", exc
                )
                self._client_check = False
                return
            gone = set(ids) - {int(entry["id"]) for entry in listed}
            for client_id in sorted(gone):
                logger.info("kelp: redis connection %s is gone: releasing what it held", ids[client_id])
                for _ in range(10_000):
                    if not self._call_unbuffered("reap", ids[client_id]):
                        break

    # --- inspection ---------------------------------------------------------------------------------

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        raw = self.call("stats")
        return [
            QueueStats(_text(raw[i]), *(int(value) for value in raw[i + 1 : i + 8]))
            for i in range(0, len(raw), 8)
        ]

    def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        raw = self.call("bindings")
        out = []
        for i in range(0, len(raw), 2):
            kind, destination, routing_key, arguments, *_ = json.loads(raw[i + 1])
            out.append((_text(raw[i]), kind, destination, routing_key, decode_arguments(arguments)))
        return out
