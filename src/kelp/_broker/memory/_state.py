"""The state of the ``memory://`` store and the rules every operation applies to it: lookups, routing,
queue limits, dead-lettering, deletion, and time (message TTL, queue expiry and delayed messages,
applied lazily). A delayed message (an envelope with a ``due`` time) is routed at publish and held in a
heap per queue, by due time then publish order, until a tick finds it due and queues it like a fresh
publish (its TTL counting from the due time).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kelp._broker.core.store import Listener
from kelp._broker.memory._queue import Entry, Held, QueueState
from kelp._broker.queue_args import ExchangeDef, dead_letter
from kelp._envelope import Envelope
from kelp.exceptions import NotFound, ResourceLocked
from kelp.routing import BindingTable, Destination, route

__all__ = ["MemoryState"]


class MemoryState:
    """Exchanges, queues and consumers of one namespace, and the rules applied to them."""

    # --- state --------------------------------------------------------------------------------------------

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
        self._queues: dict[str, QueueState] = {}
        self._next_owner = 1
        # owner -> (channel, tag) -> queue of every registered consumer
        self._consumers: dict[int, dict[tuple[int, str], QueueState]] = {}
        # Queues whose head may expire, or that may expire themselves: checked by sweeps, which run
        # when the clock passes _next_due (the earliest deadline known, or earlier).
        self._timed: set[str] = set()
        self._next_due = math.inf
        # Delayed messages: publish order among equal due times, and message id -> the copies held.
        self._held_seq = 0
        self._held_ids: dict[str, list[Held]] = {}
        for name_, type_ in (
            ("amq.direct", "direct"),
            ("amq.fanout", "fanout"),
            ("amq.topic", "topic"),
            ("amq.headers", "headers"),
            ("amq.match", "headers"),
        ):
            self._exchanges[name_] = ExchangeDef(name_, type_, True, False, False, {})

    # --- lookups ------------------------------------------------------------------------------------------

    def _exchange(self, name: str) -> ExchangeDef:
        try:
            return self._exchanges[name]
        except KeyError:
            raise NotFound(f"no exchange '{name}' in vhost '{self.name or '/'}'") from None

    def _queue(self, name: str, owner: int | None = None) -> QueueState:
        queue = self._queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '{self.name or '/'}'")
        if owner is not None:
            self._check_exclusive(queue, owner)
        return queue

    @staticmethod
    def _check_exclusive(queue: QueueState, owner: int) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner != owner:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{queue.name}': "
                "it belongs to another connection"
            )

    # --- deleting -----------------------------------------------------------------------------------------

    def _delete_queue(self, queue: QueueState) -> int:
        count = queue.clear()
        for _, _, held in queue.held:
            self._unhold(held)
        queue.held.clear()
        queue.held_count = 0
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

    # --- routing and storing ------------------------------------------------------------------------------

    def _route(
        self, exchange_name: str, routing_key: str, headers: Mapping[str, Any] | None
    ) -> list[QueueState]:
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
        queue: QueueState,
        envelope: Envelope,
        ttl: int | None,
        priority: int,
        now: float,
        redelivered: bool = False,
        since: float | None = None,
    ) -> bool:
        args = queue.args
        if args.message_ttl is not None:
            ttl = args.message_ttl if ttl is None else min(ttl, args.message_ttl)
        start = now if since is None else since  # a delayed message's TTL counts from its due time
        entry = Entry(envelope, None if ttl is None else start + ttl / 1000, priority, redelivered)
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
        queue.published += 1
        if entry.deadline is not None:
            self._timed.add(queue.name)
            if entry.deadline < self._next_due:
                self._next_due = entry.deadline
        if queue.consumers:
            self._wake(queue)
        return True

    @staticmethod
    def _full(queue: QueueState, extra_bytes: int) -> bool:
        args = queue.args
        return (args.max_length is not None and queue.count + 1 > args.max_length) or (
            args.max_length_bytes is not None and queue.bytes + extra_bytes > args.max_length_bytes
        )

    @staticmethod
    def _over(queue: QueueState) -> bool:
        args = queue.args
        return (args.max_length is not None and queue.count > args.max_length) or (
            args.max_length_bytes is not None and queue.bytes > args.max_length_bytes
        )

    def _wake(self, queue: QueueState) -> None:
        listener = self.listener
        if listener is not None and listener.waiting:
            listener.wake((queue.name,))

    def _dead_letter(self, queue: QueueState, entry: Entry, reason: str, now: float) -> None:
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

    # --- delayed messages ---------------------------------------------------------------------------------

    def _hold(
        self, queues: list[QueueState], envelope: Envelope, ttl: int | None, priority: int, now: float
    ) -> None:
        """Hold a delayed message in each queue until its due time (wall clock, mapped to the store's)."""
        assert envelope.due is not None
        # The wall clock read before the store's: a pause between the two reads makes the due time
        # later, never earlier.
        wall = self._wall_clock()
        due = self._clock() + (envelope.due - wall)
        message_id = envelope.properties.get("message_id")
        copies = self._held_ids.setdefault(message_id, []) if message_id else None
        for queue in queues:
            held = Held(queue, envelope, due, ttl, priority)
            self._held_seq += 1
            heapq.heappush(queue.held, (due, self._held_seq, held))
            queue.held_count += 1
            if copies is not None:
                copies.append(held)
            self._timed.add(queue.name)
        if due < self._next_due:
            self._next_due = due
            # Connections waiting now computed their wait without this earlier due time.
            listener = self.listener
            if listener is not None and listener.waiting:
                listener.wake_all()

    def _unhold(self, held: Held) -> None:
        """Forget a held copy: cancelled, deleted with its queue, or moved to its queue."""
        if not held.live:
            return
        held.live = False
        message_id: str | None = held.envelope.properties.get("message_id")
        copies = self._held_ids.get(message_id) if message_id else None
        if message_id and copies is not None:
            copies.remove(held)
            if not copies:
                del self._held_ids[message_id]

    def _promote(self, queue: QueueState, now: float) -> None:
        """Queue the held messages that are due, in due then publish order; TTL counts from the due time."""
        held_heap = queue.held
        while held_heap and held_heap[0][0] <= now:
            due, _, held = heapq.heappop(held_heap)
            if not held.live:
                continue
            queue.held_count -= 1
            self._unhold(held)
            self._enqueue(queue, held.envelope, held.ttl, held.priority, now, since=due)

    # --- time ---------------------------------------------------------------------------------------------

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

    def _queue_deadlines(self, queue: QueueState) -> list[float]:
        found = []
        for level in queue.levels:
            if level and level[0].deadline is not None:
                found.append(level[0].deadline)
        if queue.args.expires is not None and not queue.consumers:
            found.append(queue.last_used + queue.args.expires / 1000)
        if queue.held:
            found.append(queue.held[0][0])
        return found

    def _due(self, queue: QueueState, now: float) -> None:
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

    def _sweep_queue(self, queue: QueueState, now: float) -> None:
        args = queue.args
        if args.expires is not None and not queue.consumers and queue.last_used + args.expires / 1000 <= now:
            self._delete_queue(queue)
            return
        if queue.held:
            self._promote(queue, now)
        for level in queue.levels:
            while level and level[0].deadline is not None and level[0].deadline <= now:
                entry = level.popleft()
                queue.count -= 1
                queue.bytes -= entry.size
                self._dead_letter(queue, entry, "expired", now)
        if (
            args.expires is None
            and args.message_ttl is None
            and not queue.held
            and not any(level and level[0].deadline is not None for level in queue.levels)
        ):
            self._timed.discard(queue.name)
