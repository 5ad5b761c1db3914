"""The broker core's session layer over the smallest store that keeps the storage protocol: what a new
store (postgres, a user's) gets from the session, and what the session asks of the store."""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pytest

from kelp._broker.core import Item, Listener, Session, Unacked
from kelp._broker.core.errors import ErrorMap
from kelp._envelope import Envelope, QueueInfo
from kelp.exceptions import InconsistencyError, NotFound, OperationalError, PreconditionFailed, UsageError


class ListStore:
    """Default-exchange routing only; each queue a deque of ``[ref, body, redelivered]``."""

    def __init__(self) -> None:
        self.listener: Listener | None = None
        self.queues: dict[str, deque[list[Any]]] = {}
        self.consumers: dict[tuple[int, int, str], str] = {}
        self.claimed: dict[int, int] = {}  # ref -> owner
        self.next_ref = self.next_owner = 1
        self.acked: list[int] = []

    def connect(self) -> int:
        self.next_owner += 1
        return self.next_owner - 1

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        self.close_channel(owner, -1, unacked)
        for key in [k for k in self.consumers if k[0] == owner]:
            del self.consumers[key]

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        for key in [k for k in self.consumers if k[:2] == (owner, channel)]:
            del self.consumers[key]
        self.reject(owner, unacked, True)

    def declare_exchange(self, *args: Any) -> None:
        raise NotImplementedError

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        raise NotImplementedError

    def declare_queue(self, owner: int, name: str, *args: Any) -> QueueInfo:
        queue = self.queues.setdefault(name, deque())
        return QueueInfo(name, len(queue), 0)

    def delete_queue(self, owner: int, name: str, if_unused: bool, if_empty: bool) -> int:
        count = len(self.queues.pop(name, ()))
        assert self.listener is not None
        self.listener.queues_deleted({name})
        return count

    def purge_queue(self, owner: int, name: str) -> int:
        raise NotImplementedError

    def bind(self, *args: Any) -> None:
        raise NotImplementedError

    def unbind(self, *args: Any) -> None:
        raise NotImplementedError

    def consume(self, owner: int, channel: int, queue: str, tag: str) -> None:
        if queue not in self.queues:
            raise NotFound(f"no queue '{queue}'")
        self.consumers[(owner, channel, tag)] = queue

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        self.consumers.pop((owner, channel, tag), None)

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        return [(name, len(q), unacked.get(name, 0), 0) for name, q in self.queues.items()]

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return []

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        for envelope in envelopes:
            self.queues[envelope.routing_key].append([self.next_ref, envelope.body, False])
            self.next_ref += 1
        if self.listener is not None:
            self.listener.wake({e.routing_key for e in envelopes})
        return []

    def _take(self, owner: int, queue: str) -> Item:
        ref, body, redelivered = self.queues[queue].popleft()
        self.claimed[ref] = owner
        return (ref, body, {}, {}, "", queue, redelivered)

    def claim(self, owner: int, plan: Sequence[Any], limit: int) -> list[Any]:
        out = []
        for channel, rooms, channel_room in plan:
            for consumer, room in rooms:
                queue = self.queues.get(consumer.queue, deque())
                n = min(room, channel_room, len(queue))
                if n > 0:
                    out.append((channel, consumer, [self._take(owner, consumer.queue) for _ in range(n)]))
                    channel_room -= n
        return out

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        if not self.queues[queue]:
            return None
        item = self._take(owner, queue)
        return item, len(self.queues[queue])

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        for item in unacked:
            assert self.claimed.pop(item.ref) == owner
            self.acked.append(item.ref)

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        for item in reversed(unacked):  # back at the head, in their order
            assert self.claimed.pop(item.ref) == owner
            if requeue:
                self.queues[item.queue].appendleft([item.ref, b"", True])

    def prepare_wait(self, queues: Collection[str], consuming: bool) -> float | None:
        return 0.0 if any(self.queues.get(name) for name in queues) else None


class Waker:
    def __init__(self) -> None:
        self.woken = 0

    def set(self) -> None:
        self.woken += 1

    def clear(self) -> None:
        pass


def publish(session: Session[ListStore], queue: str, n: int) -> None:
    session.publish([Envelope(b"m%d" % i, {}, {}, "", queue) for i in range(n)])


@pytest.fixture
def session() -> Session[ListStore]:
    session = Session(ListStore())
    assert session.store.listener is session
    return session


def test_prefetch_windows_tags_and_multiple_ack(session: Session[ListStore]) -> None:
    connection = session.connect(Waker())
    channel = session.open_channel(connection)
    session.declare_queue(connection, "q", False, False, False, None, False)
    publish(session, "q", 5)
    session.qos(connection, channel, 2, False)
    tag = session.consume(connection, channel, "q", "", False)
    first = session.claim(connection)
    assert [(d.consumer_tag, d.delivery_tag) for d in first] == [(tag, 1), (tag, 2)]
    assert session.claim(connection) == []  # the window is full
    session.ack(connection, channel, 2, multiple=True)
    assert session.store.acked == [1, 2]
    assert [d.delivery_tag for d in session.claim(connection)] == [3, 4]
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 9"):
        session.ack(connection, channel, 9, multiple=False)


def test_a_closed_channel_gives_its_deliveries_back_in_order(session: Session[ListStore]) -> None:
    connection = session.connect(Waker())
    channel = session.open_channel(connection)
    session.declare_queue(connection, "q", False, False, False, None, False)
    publish(session, "q", 3)
    session.consume(connection, channel, "q", "c", False)
    assert len(session.claim(connection)) == 3
    session.close_channel(connection, channel)
    assert [ref for ref, _, redelivered in session.store.queues["q"] if redelivered] == [1, 2, 3]
    assert session.store.claimed == {}
    with pytest.raises(UsageError, match="channel 1 is closed"):
        session.ack(connection, channel, 1, multiple=False)


def test_reject_requeues_and_get_counts_what_is_left(session: Session[ListStore]) -> None:
    connection = session.connect(Waker())
    channel = session.open_channel(connection)
    session.declare_queue(connection, "q", False, False, False, None, False)
    publish(session, "q", 2)
    delivery = session.get(connection, channel, "q", no_ack=False)
    assert delivery is not None
    assert (delivery.delivery_tag, delivery.message_count, delivery.redelivered) == (1, 1, False)
    session.reject(connection, channel, 1, requeue=True)
    again = session.get(connection, channel, "q", no_ack=False)
    assert again is not None
    assert (again.delivery_tag, again.redelivered) == (2, True)
    assert session.queue_stats() == [("q", 1, 1, 0)]


def test_waiting_wake_ups_and_a_deleted_queue(session: Session[ListStore]) -> None:
    waker = Waker()
    connection = session.connect(waker)
    channel = session.open_channel(connection)
    session.declare_queue(connection, "q", False, False, False, None, False)
    session.consume(connection, channel, "q", "c", False)
    assert session.prepare_wait(connection) is None  # nothing ready, no deadline
    assert session.waiting == 1
    publish(session, "q", 1)
    assert (waker.woken, session.waiting) == (1, 0)
    session.delete_queue(connection, "q", False, False)
    assert session.take_cancelled(connection) == (channel, "c", "q")
    assert session.take_cancelled(connection) is None
    assert session.prepare_wait(connection) is None  # no consumer left


def test_disconnect_releases_everything(session: Session[ListStore]) -> None:
    connection = session.connect(Waker())
    channel = session.open_channel(connection)
    session.declare_queue(connection, "q", False, False, False, None, False)
    publish(session, "q", 2)
    session.consume(connection, channel, "q", "c", False)
    assert len(session.claim(connection)) == 2
    session.disconnect(connection)
    assert session.store.claimed == {}
    assert session.store.consumers == {}
    with pytest.raises(UsageError, match="connection is closed"):
        session.open_channel(connection)


def test_error_map_translates_native_failures_once() -> None:
    errors = ErrorMap(
        (sqlite3.OperationalError, lambda e: "locked" in str(e), lambda e, where: OperationalError(where)),
        (sqlite3.DatabaseError, None, lambda e, where: InconsistencyError(f"{where}: {e}")),
    )
    assert isinstance(errors.translate(sqlite3.OperationalError("database is locked"), "f"), OperationalError)
    assert isinstance(errors.translate(sqlite3.OperationalError("disk I/O"), "f"), InconsistencyError)
    assert errors.translate(KeyError("x")) is None
    with pytest.raises(InconsistencyError, match="f: malformed"), errors.boundary("f"):
        raise sqlite3.DatabaseError("malformed")
    with pytest.raises(NotFound), errors.boundary("f"):  # kelp's own pass unchanged
        raise NotFound("no queue")
    with pytest.raises(KeyError), errors.boundary("f"):  # a bug is not disguised
        raise KeyError("x")
