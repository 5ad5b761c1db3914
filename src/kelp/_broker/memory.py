"""The in-process broker behind ``memory://``: exact AMQP semantics, thread-safe, no I/O.

One :class:`MemoryBroker` per namespace (``memory://`` or ``memory://name``) lives for the process. Every
operation takes the broker's lock for a short, non-blocking critical section, so the sync and asyncio
transports call it directly and threads may share it. Consumers pull: a connection claims deliveries for
its consumers (within their prefetch windows) when it drains, and the broker wakes a waiting connection
through its :class:`Signal` when a message arrives on a queue it consumes from.

Time-based rules (message TTL, queue expiry) are applied lazily, the way RabbitMQ expires messages: at the
head of a queue, whenever the queue is touched, and by waiting connections whose wait is bounded by the
broker's next deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from kelp._broker.queue_args import (
    ExchangeDef,
    QueueArgs,
    binding_destination,
    check_exchange_redeclare,
    check_name,
    check_queue_redeclare,
    dead_letter,
    expiration_ms,
    generated_queue_name,
    tag,
)
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.exceptions import (
    AccessRefused,
    ChannelError,
    MessageNacked,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
    UsageError,
)
from kelp.routing import BindingTable, Destination, route

__all__ = ["MemoryBroker", "broker_for"]

# Claims per drain are capped so that an unlimited prefetch does not move a whole queue at once.
MAX_CLAIM = 1000


class Waker(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...


class _Entry:
    """One stored copy of a message in one queue."""

    __slots__ = ("deadline", "envelope", "priority", "redelivered", "size")

    def __init__(self, envelope: Envelope, deadline: float | None, priority: int, redelivered: bool) -> None:
        self.envelope = envelope
        self.deadline = deadline
        self.priority = priority
        self.redelivered = redelivered
        self.size = len(envelope.body)


class _Queue:
    __slots__ = (
        "args",
        "arguments",
        "auto_delete",
        "bytes",
        "consumers",
        "count",
        "durable",
        "exclusive_owner",
        "had_consumer",
        "last_used",
        "levels",
        "name",
        "rr",
    )

    def __init__(
        self,
        name: str,
        durable: bool,
        exclusive_owner: _Connection | None,
        auto_delete: bool,
        arguments: dict[str, Any],
        args: QueueArgs,
        now: float,
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.args = args
        # One deque per priority level, highest last; a plain queue has one level.
        self.levels: list[deque[_Entry]] = [deque() for _ in range((args.max_priority or 0) + 1)]
        self.count = 0
        self.bytes = 0
        self.consumers: list[_Consumer] = []
        self.had_consumer = False
        self.last_used = now
        self.rr = 0

    def push(self, entry: _Entry, front: bool = False) -> None:
        level = self.levels[min(entry.priority, len(self.levels) - 1)]
        if front:
            level.appendleft(entry)
        else:
            level.append(entry)
        self.count += 1
        self.bytes += entry.size

    def head_level(self) -> deque[_Entry] | None:
        for level in reversed(self.levels):
            if level:
                return level
        return None

    def pop(self) -> _Entry | None:
        levels = self.levels
        level = levels[0] if len(levels) == 1 else self.head_level()
        if not level:
            return None
        entry = level.popleft()
        self.count -= 1
        self.bytes -= entry.size
        return entry

    def clear(self) -> int:
        count = self.count
        for level in self.levels:
            level.clear()
        self.count = self.bytes = 0
        return count


class _Consumer:
    __slots__ = ("channel", "no_ack", "prefetch", "queue", "tag", "unacked")

    def __init__(self, tag: str, queue: _Queue, channel: _Channel, no_ack: bool, prefetch: int) -> None:
        self.tag = tag
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.unacked = 0


class _Unacked:
    __slots__ = ("consumer", "entry", "queue_name")

    def __init__(self, queue_name: str, entry: _Entry, consumer: _Consumer | None) -> None:
        self.queue_name = queue_name
        self.entry = entry
        self.consumer = consumer


class _Channel:
    __slots__ = ("connection", "consumers", "id", "next_tag", "prefetch", "prefetch_global", "unacked")

    def __init__(self, connection: _Connection, channel_id: int) -> None:
        self.connection = connection
        self.id = channel_id
        self.next_tag = 1
        self.unacked: dict[int, _Unacked] = {}
        self.consumers: dict[str, _Consumer] = {}
        self.prefetch = 0  # for consumers started after basic.qos(global=False)
        self.prefetch_global = 0  # 0 = unlimited


class _Connection:
    __slots__ = ("cancelled", "channels", "id", "next_channel", "waiting", "waker")

    def __init__(self, connection_id: int, waker: Waker) -> None:
        self.id = connection_id
        self.waker = waker
        self.channels: dict[int, _Channel] = {}
        self.next_channel = 1
        self.waiting = False
        # (channel id, consumer tag, queue name) of consumers whose queue was deleted, not yet reported
        self.cancelled: list[tuple[int, str, str]] = []


class MemoryBroker:
    """All exchanges, queues and messages of one ``memory://`` namespace."""

    def __init__(
        self,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._exchanges: dict[str, ExchangeDef] = {}
        self._queues: dict[str, _Queue] = {}
        self._connections: dict[int, _Connection] = {}
        self._next_connection = 1
        # Queues whose head may expire, or that may expire themselves: checked by sweeps, which run
        # when the clock passes _next_due (the earliest deadline known, or earlier).
        self._timed: set[str] = set()
        self._next_due = math.inf
        for name_, type_ in (
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            ("amq.topic", "topic"),
            ("amq.headers", "headers"),
            ("amq.match", "headers"),
        ):
            self._exchanges[name_] = ExchangeDef(name_, type_, True, False, False, {})

    # --- connections and channels ----------------------------------------------------------------------

    def connect(self, waker: Waker) -> int:
        with self._lock:
            connection = _Connection(self._next_connection, waker)
            self._next_connection += 1
            self._connections[connection.id] = connection
            return connection.id

    def disconnect(self, connection_id: int) -> None:
        """Close every channel (unacked messages go back, flagged redelivered) and drop exclusive queues."""
        with self._lock:
            connection = self._connections.pop(connection_id, None)
            if connection is None:
                return
            for channel_id in list(connection.channels):
                self._close_channel(connection, channel_id)
            for queue in [q for q in self._queues.values() if q.exclusive_owner is connection]:
                self._delete_queue(queue)

    def open_channel(self, connection_id: int) -> int:
        with self._lock:
            connection = self._connection(connection_id)
            channel = _Channel(connection, connection.next_channel)
            connection.next_channel += 1
            connection.channels[channel.id] = channel
            return channel.id

    def close_channel(self, connection_id: int, channel_id: int) -> None:
        with self._lock:
            connection = self._connections.get(connection_id)
            if connection is not None:
                self._close_channel(connection, channel_id)

    def _close_channel(self, connection: _Connection, channel_id: int) -> None:
        channel = connection.channels.pop(channel_id, None)
        if channel is None:
            return
        for consumer_tag in list(channel.consumers):
            self._cancel(channel, consumer_tag)
        self._requeue_unacked(channel, sorted(channel.unacked))

    def _connection(self, connection_id: int) -> _Connection:
        try:
            return self._connections[connection_id]
        except KeyError:
            raise UsageError("the connection is closed") from None

    def _channel(self, connection_id: int, channel_id: int) -> _Channel:
        try:
            return self._connection(connection_id).channels[channel_id]
        except KeyError:
            raise UsageError(f"channel {channel_id} is closed") from None

    # --- exchanges ---------------------------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> None:
        with self._lock:
            if not name:
                return  # the default exchange always exists
            existing = self._exchanges.get(name)
            if passive:
                if existing is None:
                    raise NotFound(f"no exchange '{name}' in vhost '{self.name or '/'}'")
                return
            check_name("exchange", name, passive)
            if existing is not None:
                check_exchange_redeclare(
                    name,
                    (
                        existing.type,
                        existing.durable,
                        existing.auto_delete,
                        existing.internal,
                        existing.arguments,
                    ),
                    (type_, durable, auto_delete, internal, arguments),
                )
                return
            self._exchanges[name] = ExchangeDef(
                name, type_, durable, auto_delete, internal, dict(arguments or {})
            )

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        with self._lock:
            if not name or name.startswith("amq."):
                raise AccessRefused(f"operation not permitted on the default or 'amq.*' exchange '{name}'")
            exchange = self._exchanges.get(name)
            if exchange is None:
                return
            if if_unused and len(exchange.table):
                raise PreconditionFailed(f"exchange '{name}' in use")
            del self._exchanges[name]
            for other in self._exchanges.values():
                other.table.remove_destination(Destination.exchange(name))

    def _exchange(self, name: str) -> ExchangeDef:
        try:
            return self._exchanges[name]
        except KeyError:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name or '/'}'") from None

    # --- queues -------------------------------------------------------------------------------------------

    def declare_queue(
        self,
        connection_id: int,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        with self._lock:
            connection = self._connection(connection_id)
            now = self._clock()
            self._tick(now)
            if passive:
                queue = self._queue(name, connection)
                return QueueInfo(queue.name, queue.count, len(queue.consumers))
            if name:
                check_name("queue", name, passive)
            existing = self._queues.get(name) if name else None
            if existing is not None:
                self._check_exclusive(existing, connection)
                check_queue_redeclare(
                    name,
                    (
                        existing.durable,
                        existing.exclusive_owner is not None,
                        existing.auto_delete,
                        existing.arguments,
                    ),
                    (durable, exclusive, auto_delete, arguments),
                )
                existing.last_used = now
                self._due(existing, now)
                return QueueInfo(existing.name, existing.count, len(existing.consumers))
            args = QueueArgs.parse(arguments)
            name = name or generated_queue_name()
            queue = _Queue(
                name,
                durable,
                connection if exclusive else None,
                auto_delete,
                dict(arguments or {}),
                args,
                now,
            )
            self._queues[name] = queue
            self._due(queue, now)
            return QueueInfo(name, 0, 0)

    def delete_queue(self, connection_id: int, name: str, if_unused: bool, if_empty: bool) -> int:
        with self._lock:
            connection = self._connection(connection_id)
            queue = self._queues.get(name)
            if queue is None:
                return 0
            self._check_exclusive(queue, connection)
            if if_unused and queue.consumers:
                raise PreconditionFailed(f"queue '{name}' in use")
            if if_empty and queue.count:
                raise PreconditionFailed(f"queue '{name}' not empty")
            return self._delete_queue(queue)

    def purge_queue(self, connection_id: int, name: str) -> int:
        with self._lock:
            queue = self._queue(name, self._connection(connection_id))
            return queue.clear()

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        """``(name, ready, unacked, consumers)`` for every queue."""
        with self._lock:
            self._tick(self._clock())
            unacked: dict[str, int] = {}
            for connection in self._connections.values():
                for channel in connection.channels.values():
                    for item in channel.unacked.values():
                        unacked[item.queue_name] = unacked.get(item.queue_name, 0) + 1
            return [
                (q.name, q.count, unacked.get(q.name, 0), len(q.consumers)) for q in self._queues.values()
            ]

    def _queue(self, name: str, connection: _Connection | None = None) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name or '/'}'")
        if connection is not None:
            self._check_exclusive(queue, connection)
        return queue

    @staticmethod
    def _check_exclusive(queue: _Queue, connection: _Connection) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not connection:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{queue.name}': "
                "it belongs to another connection"
            )

    def _delete_queue(self, queue: _Queue) -> int:
        count = queue.clear()
        self._queues.pop(queue.name, None)
        self._timed.discard(queue.name)
        destination = Destination.queue(queue.name)
        for exchange in list(self._exchanges.values()):
            if exchange.table.remove_destination(destination):
                self._maybe_auto_delete_exchange(exchange)
        for consumer in list(queue.consumers):
            channel = consumer.channel
            if channel.consumers.pop(consumer.tag, None) is not None:
                # As RabbitMQ's basic.cancel: the consumer's connection learns it from its next drain.
                channel.connection.cancelled.append((channel.id, consumer.tag, queue.name))
                self._wake_connection(channel.connection)
        queue.consumers.clear()
        return count

    def _maybe_auto_delete_exchange(self, exchange: ExchangeDef) -> None:
        if (
            exchange.auto_delete
            and not len(exchange.table)
            and self._exchanges.get(exchange.name) is exchange
        ):
            del self._exchanges[exchange.name]

    # --- bindings -------------------------------------------------------------------------------------

    def bind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            connection = self._connection(connection_id)
            if not source:
                raise AccessRefused("operation not permitted on the default exchange")
            exchange = self._exchange(source)
            if kind == "queue":
                self._queue(destination, connection)
            else:
                self._exchange(destination)
            exchange.table.add(binding_destination(kind, destination), routing_key, dict(arguments or {}))

    def unbind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            connection = self._connection(connection_id)
            if not source:
                raise AccessRefused("operation not permitted on the default exchange")
            exchange = self._exchanges.get(source)
            if kind == "queue":
                self._queue(destination, connection)
            if exchange is None:
                return
            target = binding_destination(kind, destination)
            if exchange.table.remove(target, routing_key, dict(arguments or {})):
                self._maybe_auto_delete_exchange(exchange)

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """``(source, kind, destination, routing_key, arguments)`` for every binding."""
        with self._lock:
            return [
                (name, b.destination.kind, b.destination.name, b.routing_key, dict(b.arguments))
                for name, exchange in self._exchanges.items()
                for b in exchange.table
            ]

    # --- publishing ------------------------------------------------------------------------------------

    def publish(self, envelopes: Iterable[Envelope]) -> list[Envelope]:
        """Route and store each envelope; return the mandatory ones no queue took (to be returned).

        Raises MessageNacked after storing the rest when a full ``reject-publish`` queue refused one.
        """
        returned: list[Envelope] = []
        refused: list[str] = []
        with self._lock:
            now = self._clock()
            if now >= self._next_due:
                self._tick(now)
            for envelope in envelopes:
                queues = self._route(envelope.exchange, envelope.routing_key, envelope.headers)
                if not queues:
                    if envelope.mandatory:
                        returned.append(envelope)
                    continue
                ttl = expiration_ms(envelope.properties)
                priority = envelope.properties.get("priority") or 0
                for queue in queues:
                    if not self._enqueue(queue, envelope, ttl, priority, now):
                        refused.append(queue.name)
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish): "
                "message not enqueued there"
            )
        return returned

    def _route(self, exchange_name: str, routing_key: str, headers: Mapping[str, Any] | None) -> list[_Queue]:
        if not exchange_name:
            queue = self._queues.get(routing_key)
            return [queue] if queue is not None else []
        exchange = self._exchange(exchange_name)
        names = route(self._lookup, exchange.name, routing_key, headers)
        if not names:
            alternate = exchange.arguments.get("alternate-exchange")
            if isinstance(alternate, str) and alternate in self._exchanges:
                names = route(self._lookup, alternate, routing_key, headers)
        queues = self._queues
        return [queues[name] for name in names if name in queues]

    def _lookup(self, name: str) -> BindingTable | None:
        exchange = self._exchanges.get(name)
        return exchange.table if exchange is not None else None

    def _enqueue(
        self,
        queue: _Queue,
        envelope: Envelope,
        ttl: int | None,
        priority: int,
        now: float,
        redelivered: bool = False,
    ) -> bool:
        args = queue.args
        if args.message_ttl is not None:
            ttl = args.message_ttl if ttl is None else min(ttl, args.message_ttl)
        entry = _Entry(envelope, None if ttl is None else now + ttl / 1000, priority, redelivered)
        if args.bounded and self._full(queue, entry.size):
            if args.overflow != "drop-head":
                if args.overflow == "reject-publish-dlx":
                    self._dead_letter(queue, entry, "maxlen", now)
                return False
            queue.push(entry)
            while self._over(queue) and queue.count:
                dropped = queue.pop()
                if dropped is not None:
                    self._dead_letter(queue, dropped, "maxlen", now)
        else:
            queue.push(entry)
        if entry.deadline is not None:
            self._timed.add(queue.name)
            if entry.deadline < self._next_due:
                self._next_due = entry.deadline
        if queue.consumers:
            self._wake(queue)
        return True

    @staticmethod
    def _full(queue: _Queue, extra_bytes: int) -> bool:
        args = queue.args
        return (args.max_length is not None and queue.count + 1 > args.max_length) or (
            args.max_length_bytes is not None and queue.bytes + extra_bytes > args.max_length_bytes
        )

    @staticmethod
    def _over(queue: _Queue) -> bool:
        args = queue.args
        return (args.max_length is not None and queue.count > args.max_length) or (
            args.max_length_bytes is not None and queue.bytes > args.max_length_bytes
        )

    def _wake(self, queue: _Queue) -> None:
        for consumer in queue.consumers:
            connection = consumer.channel.connection
            if connection.waiting:
                connection.waiting = False
                connection.waker.set()

    def _dead_letter(self, queue: _Queue, entry: _Entry, reason: str, now: float) -> None:
        exchange = queue.args.dead_letter_exchange
        if exchange is None:
            return
        envelope = entry.envelope
        result = dead_letter(
            envelope.headers,
            envelope.properties,
            queue=queue.name,
            reason=reason,
            exchange=envelope.exchange,
            routing_key=envelope.routing_key,
            now=self._wall_clock(),
        )
        if result is None:
            return  # a dead-letter cycle: RabbitMQ drops the message too
        headers, properties = result
        routing_key = queue.args.dead_letter_routing_key or envelope.routing_key
        if exchange and exchange not in self._exchanges:
            return  # a missing dead-letter exchange drops the message, as in RabbitMQ
        copy = Envelope(envelope.body, properties, headers, exchange, routing_key)
        for target in self._route(exchange, routing_key, headers):
            self._enqueue(target, copy, None, entry.priority, now)

    # --- consuming --------------------------------------------------------------------------------------

    def qos(self, connection_id: int, channel_id: int, prefetch_count: int, global_: bool) -> None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            if global_:
                channel.prefetch_global = prefetch_count
            else:
                channel.prefetch = prefetch_count
                for consumer in channel.consumers.values():
                    consumer.prefetch = prefetch_count
            self._wake_connection(channel.connection)

    def consume(
        self, connection_id: int, channel_id: int, queue_name: str, consumer_tag: str, no_ack: bool
    ) -> str:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            queue = self._queue(queue_name, channel.connection)
            consumer_tag = consumer_tag or tag("amq.ctag-")
            if consumer_tag in channel.consumers:
                raise UsageError(f"consumer tag {consumer_tag!r} is already in use on this channel")
            consumer = _Consumer(consumer_tag, queue, channel, no_ack, channel.prefetch)
            channel.consumers[consumer_tag] = consumer
            queue.consumers.append(consumer)
            queue.had_consumer = True
            queue.last_used = self._clock()
            if queue.count:
                self._wake_connection(channel.connection)
            return consumer_tag

    def cancel(self, connection_id: int, channel_id: int, consumer_tag: str) -> None:
        with self._lock:
            self._cancel(self._channel(connection_id, channel_id), consumer_tag)

    def _cancel(self, channel: _Channel, consumer_tag: str) -> None:
        consumer = channel.consumers.pop(consumer_tag, None)
        if consumer is None:
            return
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        now = self._clock()
        queue.last_used = now
        if queue.auto_delete and queue.had_consumer and not queue.consumers and queue.name in self._queues:
            self._delete_queue(queue)
        elif not queue.consumers:
            self._due(queue, now)

    def _wake_connection(self, connection: _Connection) -> None:
        if connection.waiting:
            connection.waiting = False
            connection.waker.set()

    def take_cancelled(self, connection_id: int) -> tuple[int, str, str] | None:
        """``(channel id, consumer tag, queue)`` of one consumer cancelled because its queue was deleted
        (each reported once), or None."""
        with self._lock:
            cancelled = self._connection(connection_id).cancelled
            channels = self._connection(connection_id).channels
            while cancelled:
                entry = cancelled.pop(0)
                if entry[0] in channels:  # a channel closed since has nothing left to report
                    return entry
            return None

    def claim(self, connection_id: int) -> list[Delivery]:
        """Deliveries for the connection's consumers, up to each prefetch window (round robin)."""
        with self._lock:
            connection = self._connection(connection_id)
            now = self._clock()
            self._tick(now)
            out: list[Delivery] = []
            for channel in connection.channels.values():
                if channel.consumers:
                    self._claim_channel(channel, out, now)
            return out

    def _claim_channel(self, channel: _Channel, out: list[Delivery], now: float) -> None:
        consumers = list(channel.consumers.values())
        progress = True
        while progress and len(out) < MAX_CLAIM:
            progress = False
            for consumer in consumers:
                if channel.prefetch_global and len(channel.unacked) >= channel.prefetch_global:
                    return
                room = consumer.prefetch - consumer.unacked if consumer.prefetch else MAX_CLAIM - len(out)
                if room <= 0:
                    continue
                queue = consumer.queue
                taken = 0
                # Several consumers on one queue take turns: at most a fair share per round.
                share = (
                    room if len(queue.consumers) == 1 else min(room, 1 + queue.count // len(queue.consumers))
                )
                while taken < share and queue.count:
                    entry = self._pop_live(queue, now)
                    if entry is None:
                        break
                    out.append(self._deliver(channel, consumer, queue, entry))
                    taken += 1
                if taken:
                    progress = True
                    queue.last_used = now

    def _pop_live(self, queue: _Queue, now: float) -> _Entry | None:
        while True:
            entry = queue.pop()
            if entry is None:
                return None
            if entry.deadline is not None and entry.deadline <= now:
                self._dead_letter(queue, entry, "expired", now)
                continue
            return entry

    def _deliver(
        self,
        channel: _Channel,
        consumer: _Consumer | None,
        queue: _Queue,
        entry: _Entry,
        no_ack: bool = False,
        message_count: int | None = None,
    ) -> Delivery:
        delivery_tag = channel.next_tag
        channel.next_tag += 1
        if consumer is not None:
            no_ack = consumer.no_ack
        if not no_ack:
            channel.unacked[delivery_tag] = _Unacked(queue.name, entry, consumer)
            if consumer is not None:
                consumer.unacked += 1
        envelope = entry.envelope
        return Delivery(
            channel.id,
            consumer.tag if consumer is not None else "",
            delivery_tag,
            envelope.body,
            envelope.properties,
            envelope.headers,
            envelope.exchange,
            envelope.routing_key,
            entry.redelivered,
            message_count,
        )

    def get(self, connection_id: int, channel_id: int, queue_name: str, no_ack: bool) -> Delivery | None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            queue = self._queue(queue_name, channel.connection)
            now = self._clock()
            self._tick(now)
            queue.last_used = now
            self._due(queue, now)
            entry = self._pop_live(queue, now)
            if entry is None:
                return None
            return self._deliver(channel, None, queue, entry, no_ack=no_ack, message_count=queue.count)

    # --- settling ----------------------------------------------------------------------------------------

    def ack(self, connection_id: int, channel_id: int, delivery_tag: int, multiple: bool) -> None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            if multiple:
                for settled in self._settle(channel, delivery_tag, multiple):
                    if settled.consumer is not None:
                        settled.consumer.unacked -= 1
            else:  # the common case, kept short
                item = channel.unacked.pop(delivery_tag, None)
                if item is None:
                    raise ChannelError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}", 406)
                if item.consumer is not None:
                    item.consumer.unacked -= 1
            connection = channel.connection
            if connection.waiting:
                connection.waiting = False
                connection.waker.set()

    def reject(
        self, connection_id: int, channel_id: int, delivery_tag: int, requeue: bool, multiple: bool = False
    ) -> None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            items = self._settle(channel, delivery_tag, multiple)
            now = self._clock()
            for item in reversed(items):
                if item.consumer is not None:
                    item.consumer.unacked -= 1
                queue = self._queues.get(item.queue_name)
                if queue is None:
                    continue
                if requeue:
                    self._requeue(queue, item.entry)
                else:
                    self._dead_letter(queue, item.entry, "rejected", now)
            self._wake_connection(channel.connection)

    def recover(self, connection_id: int, channel_id: int, requeue: bool) -> None:
        """Requeue every unacked delivery of the channel (AMQP basic.recover; kelp always requeues)."""
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            self._requeue_unacked(channel, sorted(channel.unacked))

    def _settle(self, channel: _Channel, delivery_tag: int, multiple: bool) -> list[_Unacked]:
        if multiple:
            tags = (
                sorted(t for t in channel.unacked if t <= delivery_tag)
                if delivery_tag
                else sorted(channel.unacked)
            )
            return [channel.unacked.pop(t) for t in tags]
        item = channel.unacked.pop(delivery_tag, None)
        if item is None:
            raise ChannelError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}", 406)
        return [item]

    def _requeue_unacked(self, channel: _Channel, tags: list[int]) -> None:
        # Newest first with push-front, so the requeued messages keep their original order at the head.
        for delivery_tag in reversed(tags):
            item = channel.unacked.pop(delivery_tag)
            if item.consumer is not None:
                item.consumer.unacked -= 1
            queue = self._queues.get(item.queue_name)
            if queue is not None:
                self._requeue(queue, item.entry)

    def _requeue(self, queue: _Queue, entry: _Entry) -> None:
        entry.redelivered = True
        queue.push(entry, front=True)
        if queue.consumers:
            self._wake(queue)

    # --- time ---------------------------------------------------------------------------------------------

    def prepare_wait(self, connection_id: int) -> float | None:
        """Mark the connection as waiting and return seconds until the next timed event (None: no timer).

        The caller must clear its waker before calling this and wait on it afterwards: a publish between
        the two sets the waker, so no wake-up is lost.
        """
        with self._lock:
            connection = self._connection(connection_id)
            now = self._clock()
            self._tick(now)
            if connection.cancelled or self._has_work(connection):
                return 0.0
            connection.waiting = True
            return None if self._next_due == math.inf else max(0.0, self._next_due - now)

    def _has_work(self, connection: _Connection) -> bool:
        for channel in connection.channels.values():
            for consumer in channel.consumers.values():
                if (
                    consumer.queue.count
                    and (not consumer.prefetch or consumer.unacked < consumer.prefetch)
                    and (not channel.prefetch_global or len(channel.unacked) < channel.prefetch_global)
                ):
                    return True
        return False

    def _next_deadline(self) -> float | None:
        deadline: float | None = None
        for name in self._timed:
            queue = self._queues.get(name)
            if queue is None:
                continue
            for candidate in self._queue_deadlines(queue):
                if deadline is None or candidate < deadline:
                    deadline = candidate
        return deadline

    def _queue_deadlines(self, queue: _Queue) -> list[float]:
        found = []
        for level in queue.levels:
            if level and level[0].deadline is not None:
                found.append(level[0].deadline)
        if queue.args.expires is not None and not queue.consumers:
            found.append(queue.last_used + queue.args.expires / 1000)
        return found

    def _due(self, queue: _Queue, now: float) -> None:
        """Note the queue's next timed event (its expiry, if it has one)."""
        if queue.args.expires is not None or queue.args.message_ttl is not None:
            self._timed.add(queue.name)
        if queue.args.expires is not None and not queue.consumers:
            self._next_due = min(self._next_due, now + queue.args.expires / 1000)

    def _tick(self, now: float) -> None:
        """Apply every timed rule that is due: expire messages at queue heads and unused queues."""
        if now < self._next_due:
            return
        self._sweep(now)
        deadline = self._next_deadline()
        self._next_due = math.inf if deadline is None else deadline

    def _sweep(self, now: float) -> None:
        for name in list(self._timed):
            queue = self._queues.get(name)
            if queue is None:
                self._timed.discard(name)
                continue
            self._sweep_queue(queue, now)

    def _sweep_queue(self, queue: _Queue, now: float) -> None:
        args = queue.args
        if args.expires is not None and not queue.consumers and queue.last_used + args.expires / 1000 <= now:
            self._delete_queue(queue)
            return
        for level in queue.levels:
            while level and level[0].deadline is not None and level[0].deadline <= now:
                entry = level.popleft()
                queue.count -= 1
                queue.bytes -= entry.size
                self._dead_letter(queue, entry, "expired", now)
        if (
            args.expires is None
            and args.message_ttl is None
            and not any(level and level[0].deadline is not None for level in queue.levels)
        ):
            self._timed.discard(queue.name)


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker_for(name: str) -> MemoryBroker:
    """The process-wide broker of the ``memory://name`` namespace (created on first use)."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(name)
        return broker
