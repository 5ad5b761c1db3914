"""The in-process store behind ``memory://``: the storage protocol of the broker core
(:mod:`kelp._broker.core.store`) over :class:`~kelp._broker.memory._state.MemoryState`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from kelp._broker.core.store import Claimer, Item, Unacked
from kelp._broker.memory._queue import Entry, QueueState
from kelp._broker.memory._state import MemoryState
from kelp._broker.queue_args import (
    ExchangeDef,
    QueueArgs,
    binding_destination,
    check_exchange_redeclare,
    check_name,
    check_queue_redeclare,
    expiration_ms,
    generated_queue_name,
)
from kelp._envelope import Envelope, QueueInfo, QueueStats
from kelp.exceptions import (
    AccessRefused,
    MessageNacked,
    NotFound,
    PreconditionFailed,
)
from kelp.routing import Destination

__all__ = ["MemoryStore"]

C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class MemoryStore(MemoryState):
    """All exchanges, queues and messages of one ``memory://`` namespace (see :mod:`kelp._broker.core.store`
    for the contract)."""

    # --- owners -------------------------------------------------------------------------------------------

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

    # --- exchanges ----------------------------------------------------------------------------------------

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
                check_exchange_redeclare(existing, type_, durable, auto_delete, internal, arguments)
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
                check_queue_redeclare(name, existing, durable, exclusive, auto_delete, arguments)
                existing.last_used = now
                self._due(existing, now)
                return QueueInfo(existing.name, existing.count, len(existing.consumers))
            args = QueueArgs.parse(arguments)
            name = name or generated_queue_name()
            queue = QueueState(
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

    def cancel_delayed(self, message_id: str) -> int:
        """Drop every copy of the delayed message still held; return how many."""
        with self._lock:
            copies = self._held_ids.pop(message_id, [])
            for held in copies:  # left in their heaps, skipped when popped
                held.live = False
                held.queue.held_count -= 1
            return len(copies)

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        with self._lock:
            self._tick(self._clock())
            return [
                QueueStats(
                    q.name,
                    q.count,
                    unacked.get(q.name, 0),
                    len(q.consumers),
                    q.held_count,
                    q.published,
                    q.delivered,
                    q.acked,
                )
                for q in self._queues.values()
            ]

    # --- bindings -----------------------------------------------------------------------------------------

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

    # --- consumers ----------------------------------------------------------------------------------------

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

    # --- publishing ---------------------------------------------------------------------------------------

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
                if envelope.due is not None:
                    self._hold(queues, envelope, ttl, priority, now)
                    continue
                for queue in queues:
                    if not self._enqueue(queue, envelope, ttl, priority, now):
                        refused.append(queue.name)
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish): "
                "message not enqueued there"
            )
        return returned

    # --- claiming -----------------------------------------------------------------------------------------

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
                            queue.delivered += taken
                            queue.last_used = now
                out.extend((channel, slot[0], slot[3]) for slot in slots if slot[3])
        return out

    def _pop_live(self, queue: QueueState, now: float) -> Entry | None:
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
            queue.delivered += 1
            return entry.item(), queue.count

    # --- settling -----------------------------------------------------------------------------------------

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """A claimed entry lives only in its delivery: only its queue's count of acks moves."""
        queues = self._queues
        with self._lock:
            for item in unacked:
                queue = queues.get(item.queue)
                if queue is not None and item.ref.home is queue:
                    queue.acked += 1

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        with self._lock:
            if requeue:
                self._requeue_all(unacked)
                return
            now = self._clock()
            for item in reversed(unacked):
                queue = self._queues.get(item.queue)
                if queue is not None and item.ref.home is queue:
                    self._dead_letter(queue, item.ref, "rejected", now)

    def _requeue_all(self, unacked: Sequence[Unacked]) -> None:
        # Newest first with push-front, so the requeued messages keep their original order at the head.
        for item in reversed(unacked):
            queue = self._queues.get(item.queue)
            entry: Entry = item.ref
            if queue is not None and entry.home is queue:
                entry.redelivered = True
                queue.push(entry, front=True)
                if queue.consumers:
                    self._wake(queue)

    # --- waiting ------------------------------------------------------------------------------------------

    def prepare_wait(self, queues: Collection[str], consuming: bool) -> float | None:
        with self._lock:
            now = self._clock()
            self._tick(now)
            for name in queues:
                queue = self._queues.get(name)
                if queue is not None and queue.count:
                    return 0.0
            return None if self._next_due == math.inf else max(0.0, self._next_due - now)
