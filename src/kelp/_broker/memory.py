"""The in-process store behind ``memory://``: exact AMQP semantics, thread-safe, no I/O.

One :class:`MemoryBroker` per namespace (``memory://`` or ``memory://name``) lives for the process: the
broker core's session layer (:mod:`kelp._broker.core.session`) over a :class:`MemoryStore`, which holds
the exchanges, queues and messages. Every store operation takes the store's lock for a short,
non-blocking critical section, so the sync and asyncio transports call it directly and threads may share
it. A claimed message is held by its delivery (the session's unacked record points at it) and returns to
its queue, flagged redelivered, when rejected with requeue or when its channel or connection closes.

Time-based rules (message TTL, queue expiry) are applied lazily, the way RabbitMQ expires messages: at the
head of a queue, whenever the queue is touched, and by waiting connections whose wait is bounded by the
store's next deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from kelp._broker.core.session import Session
from kelp._broker.core.store import Claimer, Item, Listener, Unacked
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
)
from kelp._envelope import Envelope, QueueInfo
from kelp.exceptions import (
    AccessRefused,
    MessageNacked,
    NotFound,
    PreconditionFailed,
    ResourceLocked,
)
from kelp.routing import BindingTable, Destination, route

__all__ = ["MemoryBroker", "MemoryStore", "broker_for"]

C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class _Entry:
    """One stored copy of a message in one queue."""

    __slots__ = ("deadline", "envelope", "priority", "redelivered", "seq", "size")

    def __init__(self, envelope: Envelope, deadline: float | None, priority: int, redelivered: bool) -> None:
        self.seq = 0  # its place in the queue, set when first queued
        self.envelope = envelope
        self.deadline = deadline
        self.priority = priority
        self.redelivered = redelivered
        self.size = len(envelope.body)

    def item(self) -> Item:
        envelope = self.envelope
        return (
            self,
            envelope.body,
            envelope.properties,
            envelope.headers,
            envelope.exchange,
            envelope.routing_key,
            self.redelivered,
        )


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
        "next_seq",
        "rr",
    )

    def __init__(
        self,
        name: str,
        durable: bool,
        exclusive_owner: int | None,
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
        # (owner, channel, tag) of the consumers registered on the queue
        self.consumers: set[tuple[int, int, str]] = set()
        self.had_consumer = False
        self.last_used = now
        self.rr = 0
        self.next_seq = 0

    def push(self, entry: _Entry, front: bool = False) -> None:
        """Queue ``entry`` at the tail, or (``front``: a requeue) back at its original place among the
        messages of its priority that are still queued, as RabbitMQ does."""
        level = self.levels[min(entry.priority, len(self.levels) - 1)]
        if front:
            index = 0
            # Requeued entries sit at the head: step over the ones queued before this one.
            while index < len(level) and level[index].seq < entry.seq:
                index += 1
            level.insert(index, entry)
        else:
            entry.seq = self.next_seq
            self.next_seq += 1
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


class MemoryStore:
    """All exchanges, queues and messages of one ``memory://`` namespace (see :mod:`kelp._broker.core.store`
    for the contract)."""

    def __init__(
        self,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.listener: Listener | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._exchanges: dict[str, ExchangeDef] = {}
        self._queues: dict[str, _Queue] = {}
        self._next_owner = 1
        # owner -> (channel, tag) -> queue of every registered consumer
        self._consumers: dict[int, dict[tuple[int, str], _Queue]] = {}
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

    # --- owners ----------------------------------------------------------------------------------------

    def connect(self) -> int:
        with self._lock:
            owner = self._next_owner
            self._next_owner += 1
            return owner

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        with self._lock:
            for key in list(self._consumers.get(owner, ())):
                self._cancel(owner, key)
            self._consumers.pop(owner, None)
            self._requeue_all(unacked)
            for queue in [q for q in self._queues.values() if q.exclusive_owner == owner]:
                self._delete_queue(queue)

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        with self._lock:
            for key in [k for k in self._consumers.get(owner, ()) if k[0] == channel]:
                self._cancel(owner, key)
            self._requeue_all(unacked)

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
        owner: int,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        with self._lock:
            now = self._clock()
            self._tick(now)
            if passive:
                queue = self._queue(name, owner)
                return QueueInfo(queue.name, queue.count, len(queue.consumers))
            if name:
                check_name("queue", name, passive)
            existing = self._queues.get(name) if name else None
            if existing is not None:
                self._check_exclusive(existing, owner)
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
                owner if exclusive else None,
                auto_delete,
                dict(arguments or {}),
                args,
                now,
            )
            self._queues[name] = queue
            self._due(queue, now)
            return QueueInfo(name, 0, 0)

    def delete_queue(self, owner: int, name: str, if_unused: bool, if_empty: bool) -> int:
        with self._lock:
            queue = self._queues.get(name)
            if queue is None:
                return 0
            self._check_exclusive(queue, owner)
            if if_unused and queue.consumers:
                raise PreconditionFailed(f"queue '{name}' in use")
            if if_empty and queue.count:
                raise PreconditionFailed(f"queue '{name}' not empty")
            return self._delete_queue(queue)

    def purge_queue(self, owner: int, name: str) -> int:
        with self._lock:
            return self._queue(name, owner).clear()

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        with self._lock:
            self._tick(self._clock())
            return [
                (q.name, q.count, unacked.get(q.name, 0), len(q.consumers)) for q in self._queues.values()
            ]

    def _queue(self, name: str, owner: int | None = None) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name or '/'}'")
        if owner is not None:
            self._check_exclusive(queue, owner)
        return queue

    @staticmethod
    def _check_exclusive(queue: _Queue, owner: int) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner != owner:
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
        if queue.consumers:
            for owner, channel, tag in queue.consumers:
                self._consumers.get(owner, {}).pop((channel, tag), None)
            queue.consumers.clear()
            # As RabbitMQ's basic.cancel: the consumers' connections learn it from their next drain.
            if self.listener is not None:
                self.listener.queues_deleted((queue.name,))
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
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            if not source:
                raise AccessRefused("operation not permitted on the default exchange")
            exchange = self._exchange(source)
            if kind == "queue":
                self._queue(destination, owner)
            else:
                self._exchange(destination)
            exchange.table.add(binding_destination(kind, destination), routing_key, dict(arguments or {}))

    def unbind(
        self,
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            if not source:
                raise AccessRefused("operation not permitted on the default exchange")
            exchange = self._exchanges.get(source)
            if kind == "queue":
                self._queue(destination, owner)
            if exchange is None:
                return
            target = binding_destination(kind, destination)
            if exchange.table.remove(target, routing_key, dict(arguments or {})):
                self._maybe_auto_delete_exchange(exchange)

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        with self._lock:
            return [
                (name, b.destination.kind, b.destination.name, b.routing_key, dict(b.arguments))
                for name, exchange in self._exchanges.items()
                for b in exchange.table
            ]

    # --- consumers ------------------------------------------------------------------------------------

    def consume(self, owner: int, channel: int, queue_name: str, tag: str) -> None:
        with self._lock:
            queue = self._queue(queue_name, owner)
            key = (owner, channel, tag)
            queue.consumers.add(key)
            self._consumers.setdefault(owner, {})[(channel, tag)] = queue
            queue.had_consumer = True
            queue.last_used = self._clock()

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        with self._lock:
            self._cancel(owner, (channel, tag))

    def _cancel(self, owner: int, key: tuple[int, str]) -> None:
        queue = self._consumers.get(owner, {}).pop(key, None)
        if queue is None:
            return
        queue.consumers.discard((owner, *key))
        now = self._clock()
        queue.last_used = now
        if queue.auto_delete and queue.had_consumer and not queue.consumers and queue.name in self._queues:
            self._delete_queue(queue)
        elif not queue.consumers:
            self._due(queue, now)

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
        listener = self.listener
        if listener is not None and listener.waiting:
            listener.wake((queue.name,))

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

    # --- claiming -------------------------------------------------------------------------------------

    def claim(
        self, owner: int, plan: Sequence[tuple[K, Sequence[tuple[C, int]], int]], limit: int
    ) -> list[tuple[K, C, list[Item]]]:
        out: list[tuple[K, C, list[Item]]] = []
        total = 0
        with self._lock:
            now = self._clock()
            self._tick(now)
            queues = self._queues
            for channel, rooms, channel_room in plan:
                # [consumer, room left, its queue, what it got]
                slots: list[list[Any]] = [
                    [consumer, room, queues.get(consumer.queue), []] for consumer, room in rooms
                ]
                progress = True
                while progress and total < limit and channel_room > 0:
                    progress = False
                    for slot in slots:
                        _, room, queue, items = slot
                        n = min(room, channel_room, limit - total)
                        if n <= 0 or queue is None or not queue.count:
                            continue
                        # Several consumers on one queue take turns: at most a fair share per round.
                        if len(queue.consumers) > 1:
                            n = min(n, 1 + queue.count // len(queue.consumers))
                        taken = 0
                        while taken < n and queue.count:
                            entry = self._pop_live(queue, now)
                            if entry is None:
                                break
                            envelope = entry.envelope
                            items.append(
                                (
                                    entry,
                                    envelope.body,
                                    envelope.properties,
                                    envelope.headers,
                                    envelope.exchange,
                                    envelope.routing_key,
                                    entry.redelivered,
                                )
                            )
                            taken += 1
                        if taken:
                            progress = True
                            slot[1] = room - taken
                            channel_room -= taken
                            total += taken
                            queue.last_used = now
                out.extend((channel, slot[0], slot[3]) for slot in slots if slot[3])
        return out

    def _pop_live(self, queue: _Queue, now: float) -> _Entry | None:
        while True:
            entry = queue.pop()
            if entry is None:
                return None
            if entry.deadline is not None and entry.deadline <= now:
                self._dead_letter(queue, entry, "expired", now)
                continue
            return entry

    def get(self, owner: int, queue_name: str, no_ack: bool) -> tuple[Item, int] | None:
        with self._lock:
            queue = self._queue(queue_name, owner)
            now = self._clock()
            self._tick(now)
            queue.last_used = now
            self._due(queue, now)
            entry = self._pop_live(queue, now)
            if entry is None:
                return None
            return entry.item(), queue.count

    # --- settling ----------------------------------------------------------------------------------------

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """Nothing to do: a claimed entry lives only in its delivery."""

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        with self._lock:
            if requeue:
                self._requeue_all(unacked)
                return
            now = self._clock()
            for item in reversed(unacked):
                queue = self._queues.get(item.queue)
                if queue is not None:
                    self._dead_letter(queue, item.ref, "rejected", now)

    def _requeue_all(self, unacked: Sequence[Unacked]) -> None:
        # Newest first with push-front, so the requeued messages keep their original order at the head.
        for item in reversed(unacked):
            queue = self._queues.get(item.queue)
            if queue is not None:
                entry: _Entry = item.ref
                entry.redelivered = True
                queue.push(entry, front=True)
                if queue.consumers:
                    self._wake(queue)

    # --- time ---------------------------------------------------------------------------------------------

    def prepare_wait(self, queues: Collection[str], consuming: bool) -> float | None:
        with self._lock:
            now = self._clock()
            self._tick(now)
            for name in queues:
                queue = self._queues.get(name)
                if queue is not None and queue.count:
                    return 0.0
            return None if self._next_due == math.inf else max(0.0, self._next_due - now)

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


class MemoryBroker(Session[MemoryStore]):
    """The session layer over one :class:`MemoryStore`: what a ``memory://`` connection talks to."""

    def __init__(
        self,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(MemoryStore(name, clock, wall_clock))
        self.name = name


_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker_for(name: str) -> MemoryBroker:
    """The process-wide broker of the ``memory://name`` namespace (created on first use)."""
    with _brokers_lock:
        broker = _brokers.get(name)
        if broker is None:
            broker = _brokers[name] = MemoryBroker(name)
        return broker
