"""What a channel of a broker kelp runs itself keeps in the process, with no I/O: its consumers and their
prefetch windows, the delivery tags it hands out, and the unacked deliveries each tag stands for.

Shared by :class:`~kelp._broker.core.session.Session` (memory, sqlite, postgres), which calls its store
around these methods, and by the redis:// transport, which calls its broker script around them. A
delivery recorded here stays unacked until :meth:`ChannelState.settle` or :meth:`ChannelState.drop_all`
hands it back to the caller, which then acks, rejects or requeues the message in its store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kelp._broker.core.store import Unacked
from kelp._broker.queue_args import tag as new_tag
from kelp.exceptions import PreconditionFailed, UsageError

__all__ = ["MAX_CLAIM", "ChannelState", "Consumer"]

#: The room of a consumer without a prefetch window: one claim never moves more than this for it, so
#: that an unlimited prefetch does not move a whole queue at once.
MAX_CLAIM = 1000


class Consumer:
    """A consumer of a channel: its queue, its prefetch window (0: none) and how many of its deliveries
    are unacked."""

    __slots__ = ("no_ack", "prefetch", "queue", "tag", "unacked")

    def __init__(self, tag: str, queue: str, no_ack: bool, prefetch: int) -> None:
        self.tag = tag
        self.queue = queue
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.unacked = 0


class ChannelState:
    """A channel's consumers, delivery tags and unacked deliveries (not thread-safe: the caller guards it)."""

    __slots__ = ("consumers", "id", "next_tag", "prefetch", "prefetch_global", "unacked")

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.next_tag = 1
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, Consumer] = {}
        self.prefetch = 0  # for consumers started after basic.qos(global=False)
        self.prefetch_global = 0  # 0 = unlimited

    # --- consumers -------------------------------------------------------------------------------------

    def qos(self, prefetch_count: int, global_: bool) -> None:
        """Set the channel's window (``global_``: shared by all its consumers) or each consumer's window,
        for the consumers it has and those it starts later (0: unlimited)."""
        if global_:
            self.prefetch_global = prefetch_count
        else:
            self.prefetch = prefetch_count
            for consumer in self.consumers.values():
                consumer.prefetch = prefetch_count

    def free_tag(self, consumer_tag: str) -> str:
        """The tag a new consumer gets: ``consumer_tag``, or a generated one when empty. Raises
        UsageError when a consumer of this channel already has it."""
        tag = consumer_tag or new_tag("amq.ctag-")
        if tag in self.consumers:
            raise UsageError(f"consumer tag {tag!r} is already in use on this channel")
        return tag

    def add_consumer(self, tag: str, queue: str, no_ack: bool) -> Consumer:
        """Record a consumer (its tag checked by :meth:`free_tag`) with the channel's current window."""
        consumer = self.consumers[tag] = Consumer(tag, queue, no_ack, self.prefetch)
        return consumer

    # --- claiming --------------------------------------------------------------------------------------

    def rooms(self, start: int = 0) -> list[tuple[Consumer, int]]:
        """Each consumer with its room: how many more deliveries its window takes (0 when full,
        :data:`MAX_CLAIM` without a window). Listed from the consumer at ``start`` (modulo their number)
        on, so that claims can take turns. The channel's global window (:meth:`global_room`) limits
        them together: the claim applies it."""
        consumers = list(self.consumers.values())
        if start and len(consumers) > 1:
            shift = start % len(consumers)
            consumers = consumers[shift:] + consumers[:shift]
        rooms = []
        for consumer in consumers:
            room = consumer.prefetch - consumer.unacked if consumer.prefetch else MAX_CLAIM
            rooms.append((consumer, room if room > 0 else 0))
        return rooms

    def global_room(self) -> int:
        """How many more deliveries the channel's global window takes (0 when full, :data:`MAX_CLAIM`
        without one)."""
        if not self.prefetch_global:
            return MAX_CLAIM
        room = self.prefetch_global - len(self.unacked)
        return room if room > 0 else 0

    def record(self, consumer: Consumer | None, queue: str, refs: Sequence[Any], no_ack: bool) -> int:
        """Number the deliveries of the claimed copies ``refs`` (in order, from the returned tag on) to
        ``consumer`` (None for a get) and, unless ``no_ack``, record them as unacked."""
        first = tag = self.next_tag
        if no_ack:
            tag += len(refs)
        else:
            unacked = self.unacked
            for ref in refs:
                unacked[tag] = Unacked(ref, queue, consumer)
                tag += 1
            if consumer is not None:
                consumer.unacked += tag - first
        self.next_tag = tag
        return first

    # --- settling --------------------------------------------------------------------------------------

    def settle(self, delivery_tag: int, multiple: bool) -> list[Unacked]:
        """Take the unacked delivery ``delivery_tag`` (with ``multiple``: every one up to it, all of them
        for tag 0, in delivery order) off the channel, freeing its consumer's window. Raises
        PreconditionFailed, taking nothing, for a tag that is not unacked (without ``multiple``)."""
        if multiple:
            unacked = self.unacked
            tags = sorted(t for t in unacked if t <= delivery_tag) if delivery_tag else sorted(unacked)
            items = [unacked.pop(t) for t in tags]
            for item in items:
                if item.consumer is not None:
                    item.consumer.unacked -= 1
            return items
        found = self.unacked.pop(delivery_tag, None)  # the common case, kept short
        if found is None:
            raise PreconditionFailed(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        if found.consumer is not None:
            found.consumer.unacked -= 1
        return [found]

    def drop_all(self) -> list[Unacked]:
        """Take every unacked delivery off the channel (in delivery order), freeing its consumers' windows:
        for a recover or a close, which requeue them."""
        return self.settle(0, True)
