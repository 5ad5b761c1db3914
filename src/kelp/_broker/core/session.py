"""The session layer of the brokers kelp runs itself: connections, channels, consumers, delivery tags,
prefetch windows, acks and rejects, written once over a :class:`~kelp._broker.core.store.Store`.

One :class:`Session` per store per process. Consumers pull: a connection claims deliveries for its
consumers (within their prefetch windows) when it drains, and the session wakes a waiting connection
through its waker when the store reports messages on a queue it consumes from. Every method is
thread-safe: the session's lock guards its own state for short, non-blocking sections and is never held
while the store runs (the store may call back into the session holding its own lock).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Container
from typing import Protocol, TypeVar

from kelp._broker.core.channel import MAX_CLAIM, ChannelState, Consumer
from kelp._broker.core.store import Item, Store, Unacked
from kelp._broker.core.topology import TopologyCalls
from kelp._envelope import Delivery
from kelp.exceptions import UsageError

__all__ = ["MAX_CLAIM", "Session", "Waker"]

S = TypeVar("S", bound=Store)


class Waker(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...


class _Connection:
    __slots__ = ("cancelled", "channels", "id", "next_channel", "outbox", "rotation", "waiting", "waker")

    def __init__(self, connection_id: int, waker: Waker) -> None:
        self.id = connection_id
        self.waker = waker
        self.channels: dict[int, ChannelState] = {}
        self.next_channel = 1
        self.waiting = False
        self.rotation = 0
        # Claimed deliveries not yet taken by the transport (see fill/take).
        self.outbox: list[Delivery] = []
        # (channel id, consumer tag, queue) of consumers whose queue was deleted, not yet reported
        self.cancelled: list[tuple[int, str, str]] = []


_Plan = list[tuple[ChannelState, list[tuple[Consumer, int]], int]]


class Session(TopologyCalls[S]):
    """The connections of this process to one store. Connection ids are the store's owner ids."""

    def __init__(self, store: S) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._connections: dict[int, _Connection] = {}
        self.waiting = 0  # connections marked waiting (read without the lock by stores: a hint)
        self._store_ack = store.ack
        store.listener = self

    # --- connections and channels ----------------------------------------------------------------------

    def connect(self, waker: Waker) -> int:
        connection_id = self.store.connect()
        with self._lock:
            self._connections[connection_id] = _Connection(connection_id, waker)
        return connection_id

    def connection_ids(self) -> list[int]:
        with self._lock:
            return list(self._connections)

    def disconnect(self, connection_id: int) -> None:
        """Close every channel (unacked messages go back, flagged redelivered) and drop exclusive queues."""
        with self._lock:
            connection = self._connections.get(connection_id)
            if connection is None:
                return
            unacked = [item for channel in connection.channels.values() for item in channel.drop_all()]
            self._forget_waiting(connection)
        try:
            self.store.disconnect(connection_id, unacked)
        finally:
            with self._lock:
                self._connections.pop(connection_id, None)
                connection.channels.clear()

    def open_channel(self, connection_id: int) -> int:
        with self._lock:
            connection = self._connection(connection_id)
            channel = ChannelState(connection.next_channel)
            connection.next_channel += 1
            connection.channels[channel.id] = channel
            return channel.id

    def close_channel(self, connection_id: int, channel_id: int) -> None:
        """Cancel the channel's consumers and requeue its unacked messages (flagged redelivered)."""
        with self._lock:
            connection = self._connections.get(connection_id)
            channel = connection.channels.get(channel_id) if connection is not None else None
            if channel is None:
                return
            unacked = channel.drop_all()
        try:
            self.store.close_channel(connection_id, channel_id, unacked)
        finally:
            with self._lock:
                assert connection is not None
                connection.channels.pop(channel_id, None)

    def _connection(self, connection_id: int) -> _Connection:
        try:
            return self._connections[connection_id]
        except KeyError:
            raise UsageError("the connection is closed") from None

    def _channel(self, connection_id: int, channel_id: int) -> ChannelState:
        try:
            return self._connection(connection_id).channels[channel_id]
        except KeyError:
            raise UsageError(f"channel {channel_id} is closed") from None

    def alive(self, connection_id: int) -> None:
        """Raise UsageError unless the connection is open."""
        with self._lock:
            self._connection(connection_id)

    # --- stats ----------------------------------------------------------------------------------------

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        """``(name, ready, unacked, consumers)`` for every queue."""
        unacked: dict[str, int] = {}
        with self._lock:
            for connection in self._connections.values():
                for channel in connection.channels.values():
                    for item in channel.unacked.values():
                        unacked[item.queue] = unacked.get(item.queue, 0) + 1
        return self.store.queue_stats(unacked)

    # --- consumers ----------------------------------------------------------------------------------

    def qos(self, connection_id: int, channel_id: int, prefetch_count: int, global_: bool) -> None:
        with self._lock:
            self._channel(connection_id, channel_id).qos(prefetch_count, global_)
            self._wake_connection(self._connections[connection_id])

    def consume(
        self, connection_id: int, channel_id: int, queue: str, consumer_tag: str, no_ack: bool
    ) -> str:
        with self._lock:
            tag = self._channel(connection_id, channel_id).free_tag(consumer_tag)
        self.store.consume(connection_id, channel_id, queue, tag)
        with self._lock:
            self._channel(connection_id, channel_id).add_consumer(tag, queue, no_ack)
            self._wake_connection(self._connections[connection_id])
        return tag

    def cancel(self, connection_id: int, channel_id: int, consumer_tag: str) -> None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            # Forgotten first: an auto-delete queue deleted by this very cancel is not a broker cancel.
            consumer = channel.consumers.pop(consumer_tag, None)
            if consumer is None:
                return
        try:
            self.store.cancel(connection_id, channel_id, consumer_tag)
        except BaseException:
            with self._lock:
                channel.consumers.setdefault(consumer_tag, consumer)
            raise

    def take_cancelled(self, connection_id: int) -> tuple[int, str, str] | None:
        """``(channel id, consumer tag, queue)`` of one consumer cancelled because its queue was deleted
        (each reported once), or None."""
        with self._lock:
            connection = self._connection(connection_id)
            while connection.cancelled:
                entry = connection.cancelled.pop(0)
                if entry[0] in connection.channels:  # a channel closed since has nothing left to report
                    return entry
            return None

    # --- claiming --------------------------------------------------------------------------------------

    def claim(self, connection_id: int) -> list[Delivery]:
        """Deliveries for the connection's consumers, up to each prefetch window (what an earlier
        :meth:`fill` left first)."""
        with self._lock:
            connection = self._connection(connection_id)
            if connection.outbox:
                deliveries, connection.outbox = connection.outbox, []
                return deliveries
            plan = self._plan(connection)
        if not plan:
            return []
        return self._deliver(connection, self.store.claim(connection_id, plan, MAX_CLAIM))

    def fill(self, connection_id: int) -> None:
        """Claim deliveries into the connection's outbox, for :meth:`take`.

        Two steps so that an asyncio drain cancelled while this runs in a worker thread loses nothing:
        the claimed deliveries wait in the outbox for the next drain instead of vanishing with the result.
        """
        with self._lock:
            connection = self._connection(connection_id)
            if connection.outbox:
                return
            plan = self._plan(connection)
        if not plan:
            return
        deliveries = self._deliver(connection, self.store.claim(connection_id, plan, MAX_CLAIM))
        with self._lock:
            connection.outbox.extend(deliveries)

    def take(self, connection_id: int) -> list[Delivery]:
        """The deliveries :meth:`fill` claimed, handed over once (a cheap in-memory call)."""
        with self._lock:
            connection = self._connections.get(connection_id)
            if connection is None or not connection.outbox:
                return []
            deliveries, connection.outbox = connection.outbox, []
            return deliveries

    def _plan(self, connection: _Connection) -> _Plan:
        """For each channel with consumers: its consumers with room (in turn, starting one further each
        time) and the channel's own room."""
        plan: _Plan = []
        channels = [c for c in connection.channels.values() if c.consumers]
        if not channels:
            return plan
        connection.rotation += 1
        for channel in channels:
            rooms = [(consumer, room) for consumer, room in channel.rooms(connection.rotation) if room]
            global_room = channel.global_room()
            if rooms and global_room:
                plan.append((channel, rooms, global_room))
        return plan

    def _deliver(
        self, connection: _Connection, claimed: list[tuple[ChannelState, Consumer, list[Item]]]
    ) -> list[Delivery]:
        out: list[Delivery] = []
        lost: list[Unacked] = []
        append = out.append
        with self._lock:
            for channel, consumer, items in claimed:
                queue = consumer.queue
                if connection.channels.get(channel.id) is not channel:
                    # Closed while the store claimed: the copies go back.
                    if not consumer.no_ack:
                        lost.extend(Unacked(item[0], queue, None) for item in items)
                    continue
                channel_id, consumer_tag = channel.id, consumer.tag
                tag = channel.record(consumer, queue, [item[0] for item in items], consumer.no_ack)
                for _, body, properties, headers, exchange, routing_key, redelivered in items:
                    append(
                        Delivery(
                            channel_id,
                            consumer_tag,
                            tag,
                            body,
                            properties,
                            headers,
                            exchange,
                            routing_key,
                            redelivered,
                        )
                    )
                    tag += 1
        if lost:
            self.store.reject(connection.id, lost, True)
        return out

    def get(self, connection_id: int, channel_id: int, queue: str, no_ack: bool) -> Delivery | None:
        self._channel_alive(connection_id, channel_id)
        found = self.store.get(connection_id, queue, no_ack)
        if found is None:
            return None
        (ref, body, properties, headers, exchange, routing_key, redelivered), count = found
        with self._lock:
            connection = self._connections.get(connection_id)
            channel = connection.channels.get(channel_id) if connection is not None else None
            if channel is not None:
                tag = channel.record(None, queue, (ref,), no_ack)
        if channel is None:
            if not no_ack:
                self.store.reject(connection_id, [Unacked(ref, queue, None)], True)
            raise UsageError(f"channel {channel_id} is closed")
        return Delivery(
            channel_id, "", tag, body, properties, headers, exchange, routing_key, redelivered, count
        )

    def _channel_alive(self, connection_id: int, channel_id: int) -> None:
        with self._lock:
            self._channel(connection_id, channel_id)

    # --- settling ----------------------------------------------------------------------------------------

    def ack(self, connection_id: int, channel_id: int, delivery_tag: int, multiple: bool) -> None:
        with self._lock:
            try:
                connection = self._connections[connection_id]
                channel = connection.channels[channel_id]
            except KeyError:
                self._channel(connection_id, channel_id)  # raises the right error
                raise
            found = None if multiple else channel.unacked.pop(delivery_tag, None)
            if found is None:  # multiple, or an unknown tag (settle raises)
                items = channel.settle(delivery_tag, multiple)
            else:  # one ack, inlined: a call more per ack costs memory:// about 4% of its consume rate
                if found.consumer is not None:
                    found.consumer.unacked -= 1
                items = [found]
            if connection.waiting:
                self._wake_connection(connection)
        self._store_ack(connection_id, items)

    def reject(
        self, connection_id: int, channel_id: int, delivery_tag: int, requeue: bool, multiple: bool = False
    ) -> None:
        with self._lock:
            channel = self._channel(connection_id, channel_id)
            items = channel.settle(delivery_tag, multiple)
            self._wake_connection(self._connections[connection_id])
        self.store.reject(connection_id, items, requeue)

    def recover(self, connection_id: int, channel_id: int, requeue: bool) -> None:
        """Requeue every unacked delivery of the channel (AMQP basic.recover; kelp always requeues)."""
        with self._lock:
            items = self._channel(connection_id, channel_id).drop_all()
        self.store.reject(connection_id, items, True)

    # --- waiting -----------------------------------------------------------------------------------------

    def prepare_wait(self, connection_id: int) -> float | None:
        """Mark the connection as waiting; return seconds until the next timed event (None: none), or 0
        when there is work already. Clear the waker before calling this and wait on it afterwards: a
        message arriving in between sets the waker, so no wake-up is lost."""
        with self._lock:
            connection = self._connection(connection_id)
            if connection.cancelled or connection.outbox:
                return 0.0
            if not connection.waiting:
                connection.waiting = True
                self.waiting += 1
            queues = {consumer.queue for _, rooms, _ in self._plan(connection) for consumer, _ in rooms}
            consuming = any(channel.consumers for channel in connection.channels.values())
        return self.store.prepare_wait(queues, consuming)

    def end_wait(self, connection_id: int) -> None:
        with self._lock:
            connection = self._connections.get(connection_id)
            if connection is not None:
                self._forget_waiting(connection)

    def _forget_waiting(self, connection: _Connection) -> None:
        if connection.waiting:
            connection.waiting = False
            self.waiting -= 1

    def _wake_connection(self, connection: _Connection) -> None:
        if connection.waiting:
            connection.waiting = False
            self.waiting -= 1
            connection.waker.set()

    # --- the store's listener ------------------------------------------------------------------------

    def wake(self, queues: Collection[str]) -> None:
        if not self.waiting:
            return
        with self._lock:
            for connection in self._connections.values():
                if connection.waiting and any(
                    consumer.queue in queues
                    for channel in connection.channels.values()
                    for consumer in channel.consumers.values()
                ):
                    self._wake_connection(connection)

    def wake_all(self) -> None:
        with self._lock:
            for connection in self._connections.values():
                self._wake_connection(connection)

    def queues_deleted(self, queues: Container[str]) -> None:
        """Cancel the consumers of the deleted queues, as RabbitMQ's basic.cancel: each connection
        learns it from :meth:`take_cancelled`."""
        with self._lock:
            for connection in self._connections.values():
                for channel in connection.channels.values():
                    gone = [c for c in channel.consumers.values() if c.queue in queues]
                    for consumer in gone:
                        del channel.consumers[consumer.tag]
                        connection.cancelled.append((channel.id, consumer.tag, consumer.queue))
                    if gone:
                        self._wake_connection(connection)
