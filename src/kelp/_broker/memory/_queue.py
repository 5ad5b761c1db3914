"""One queue of the ``memory://`` store: its stored copies, one deque per priority level."""

from __future__ import annotations

from collections import deque
from typing import Any

from kelp._broker.core.store import Item
from kelp._broker.queue_args import QueueArgs
from kelp._envelope import Envelope

__all__ = ["Entry", "Held", "QueueState"]


class Entry:
    """One stored copy of a message in one queue."""

    __slots__ = ("deadline", "envelope", "home", "priority", "redelivered", "seq", "size")

    def __init__(self, envelope: Envelope, deadline: float | None, priority: int, redelivered: bool) -> None:
        self.seq = 0  # its place in the queue, set when first queued
        # The queue it was first queued in: a queue deleted and declared again under the same name is
        # another queue, and a copy claimed from the old one never goes back into the new one.
        self.home: QueueState | None = None
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


class Held:
    """A delayed message held for one queue until ``due`` (the store's clock)."""

    __slots__ = ("due", "envelope", "live", "priority", "queue", "ttl")

    def __init__(
        self, queue: QueueState, envelope: Envelope, due: float, ttl: int | None, priority: int
    ) -> None:
        self.queue = queue
        self.envelope = envelope
        self.due = due
        self.ttl = ttl
        self.priority = priority
        self.live = True  # False once cancelled, or moved to the queue


class QueueState:
    __slots__ = (
        "acked",
        "args",
        "arguments",
        "auto_delete",
        "bytes",
        "consumers",
        "count",
        "delivered",
        "durable",
        "exclusive_owner",
        "had_consumer",
        "held",
        "held_count",
        "last_used",
        "levels",
        "name",
        "next_seq",
        "published",
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
        self.levels: list[deque[Entry]] = [deque() for _ in range((args.max_priority or 0) + 1)]
        self.count = 0
        self.bytes = 0
        # (owner, channel, tag) of the consumers registered on the queue
        self.consumers: set[tuple[int, int, str]] = set()
        self.had_consumer = False
        self.last_used = now
        self.rr = 0
        self.next_seq = 0
        # Delayed messages: a heap of (due, publish sequence, held); cancelled ones stay until popped.
        self.held: list[tuple[float, int, Held]] = []
        self.held_count = 0
        # What the web view and Prometheus turn into rates: copies queued, deliveries made, acks taken.
        self.published = self.delivered = self.acked = 0

    def push(self, entry: Entry, front: bool = False) -> None:
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
            entry.home = self
            entry.seq = self.next_seq
            self.next_seq += 1
            level.append(entry)
        self.count += 1
        self.bytes += entry.size

    def head_level(self) -> deque[Entry] | None:
        for level in reversed(self.levels):
            if level:
                return level
        return None

    def pop(self) -> Entry | None:
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
