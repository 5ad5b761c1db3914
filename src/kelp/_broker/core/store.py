"""The storage protocol: what a store must do so that :class:`~kelp._broker.core.session.Session` can run
a broker over it (``memory://``, ``sqlite://``, ``postgresql://``...).

Two halves, split by who knows what:

* The **store** holds the topology (exchanges, queues, bindings, the consumers registered on queues) and
  the messages. It routes at publish time and keeps one copy per queue. A copy is *ready* (in its queue,
  claimable) or *claimed* by an **owner** - the integer id the store handed out in :meth:`Store.connect`,
  one per transport connection. A claimed copy stays stored until it is acked; when its owner goes away
  (:meth:`Store.disconnect`, or - for a store shared by several processes - the owner's process or
  database session dies, noticed by the store however it can) it becomes ready again, flagged
  redelivered. That is the at-least-once guarantee, and it is the store's job.
* The **session** (one per store per process) holds what only this process knows: connections,
  channels, consumers, delivery tags, prefetch windows, which claimed copies each delivery tag stands
  for. It decides how many messages each consumer may take, asks the store to claim them, numbers them,
  and turns acks, rejects and closes into :meth:`Store.ack` / :meth:`Store.reject` calls. The session
  owns the *unacked state* of this process: a claimed copy it has not handed back is unacked.

A claimed copy is identified by its ``ref``: whatever the store returned with it in an :data:`Item` (a
row id, an object). The session hands refs back unchanged inside :class:`Unacked` records, which also
carry the queue the copy was claimed from.

Wake-ups. A connection that has nothing to deliver waits on its waker. The session marks it waiting and
then calls :meth:`Store.prepare_wait`; the store returns 0 when it sees ready messages, else how long the
connection may sleep (until the store's next deadline: a message's or a queue's expiry; later, a delayed
message's due time). Whenever messages become ready on a queue - published, requeued, released by a dead
owner, committed by another process - the store calls ``listener.wake(queues)`` (the session is the
listener); a wake-up may be spurious, never lost. When a queue is deleted (by anyone, for any reason:
delete, auto-delete, expiry, its exclusive owner leaving, another process), the store calls
``listener.queues_deleted(names)`` so that the consumers on it are cancelled (AMQP's basic.cancel).

Deadlines are applied by the store itself, lazily: whenever it is called (claim, get, publish, stats,
prepare_wait) it first expires what is due - messages at queue heads, unused queues - dead-lettering
where the queue says so.

Errors. Refusals are kelp exceptions raised by the store: ``NotFound`` (no such exchange or queue),
``PreconditionFailed`` (redeclared differently, in use, not empty), ``ResourceLocked`` (another owner's
exclusive queue), ``AccessRefused`` (the default or ``amq.*`` exchanges), ``MessageNacked`` (a full
``reject-publish`` queue). A store maps its native failures to these once, at its boundary
(:mod:`kelp._broker.core.errors`); none of its native exceptions reaches a user.

Threads. Every method may be called from any thread, concurrently; the store serialises what must be.
The session never holds its own lock while it calls the store, and the store may call the listener while
holding its lock (so the order is always store lock, then session lock). A store may block (disk, network,
another process's lock): the asyncio face calls it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from kelp._envelope import Envelope, QueueInfo

__all__ = ["Claimer", "Item", "Listener", "Store", "Unacked"]

#: One claimed copy: ``(ref, body, properties, headers, exchange, routing_key, redelivered)``.
Item = tuple[Any, bytes, dict[str, Any], dict[str, Any], str, str, bool]


class Claimer(Protocol):
    """What a store reads of a session's consumer when it claims for it."""

    @property
    def queue(self) -> str: ...

    @property
    def no_ack(self) -> bool: ...


C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class Unacked:
    """A delivery not yet settled: the store's ``ref`` of the claimed copy, its queue, and the consumer
    it went to (None for ``get``)."""

    __slots__ = ("consumer", "queue", "ref")

    def __init__(self, ref: Any, queue: str, consumer: Any) -> None:
        self.ref = ref
        self.queue = queue
        self.consumer = consumer


class Listener(Protocol):
    """The session, as the store sees it."""

    #: How many connections wait right now (a store may skip wake-ups while none does).
    waiting: int

    def wake(self, queues: Collection[str]) -> None:
        """Messages became ready on ``queues``: wake the connections that consume from one and wait."""

    def wake_all(self) -> None:
        """Something changed that the store cannot pin to queues (another process committed)."""

    def queues_deleted(self, queues: Container[str]) -> None:
        """The queues in ``queues`` are gone: cancel their consumers (each connection learns it once)."""


class Store(Protocol):
    """A broker's exchanges, queues and messages. See the module docstring for the contract."""

    listener: Listener | None

    # --- owners ------------------------------------------------------------------------------------

    def connect(self) -> int:
        """A new owner id (a transport connection)."""

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """The owner is gone: ``unacked`` (in delivery order) and every other copy it still holds become
        ready again, flagged redelivered, at their original places; its consumers are removed (which may
        auto-delete their queues); its exclusive queues are deleted."""

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        """A channel closed: its consumers are removed and ``unacked`` requeued (as in :meth:`disconnect`)."""

    # --- topology ----------------------------------------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type_: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> None: ...

    def delete_exchange(self, name: str, if_unused: bool) -> None: ...

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
        """Declare (or check, ``passive``) a queue; an empty name gets a generated one. An exclusive queue
        belongs to ``owner``."""

    def delete_queue(self, owner: int, name: str, if_unused: bool, if_empty: bool) -> int:
        """Delete the queue with its ready messages (their count is returned); consumers are cancelled."""

    def purge_queue(self, owner: int, name: str) -> int:
        """Drop the ready messages of the queue (claimed ones stay); return how many."""

    def bind(
        self,
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        """Bind a queue (``kind`` "queue") or an exchange ("exchange") to the exchange ``source``."""

    def unbind(
        self,
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None: ...

    def consume(self, owner: int, channel: int, queue: str, tag: str) -> None:
        """Register a consumer on the queue (checks that it exists and that ``owner`` may use it)."""

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        """Remove a consumer; an auto-delete queue left with none is deleted."""

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        """``(name, ready, unacked, consumers)`` of every queue. ``unacked`` is the session's count per
        queue; a store that knows the claimed copies of every process counts them itself."""

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """``(source, kind, destination, routing_key, arguments)`` of every binding."""

    # --- messages ----------------------------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Route and store each envelope (one copy per queue it reaches), stored before returning; return
        the mandatory ones no queue took. Raises MessageNacked, after storing the rest, when a full
        ``reject-publish`` queue refused one."""

    def claim(
        self, owner: int, plan: Sequence[tuple[K, Sequence[tuple[C, int]], int]], limit: int
    ) -> list[tuple[K, C, list[Item]]]:
        """Claim ready copies for ``owner``: for each ``(channel, [(consumer, room)], channel_room)`` of the
        plan, up to ``room`` from ``consumer.queue`` for each consumer, no more than ``channel_room`` for
        the channel and ``limit`` in all. Highest priority first, then oldest. Copies claimed for a
        ``no_ack`` consumer are removed at once (acked on delivery). Returns ``(channel, consumer, items)``
        for each consumer that got some."""

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        """Claim the queue's next ready copy (removed at once with ``no_ack``) and the count left ready."""

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """Remove the claimed copies for good. A store may defer the removal (group commit): a copy
        whose ack was lost with its process is redelivered, never lost."""

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        """``requeue``: the copies become ready again at their original places, flagged redelivered.
        Otherwise they are removed and dead-lettered when their queue has a dead-letter exchange."""

    def cancel_delayed(self, message_id: str) -> int:
        """Drop every copy still held of the delayed message ``message_id`` (the id publish returned);
        return how many were dropped (0: none held - already due, cancelled, or never delayed)."""

    def prepare_wait(self, queues: Collection[str], consuming: bool) -> float | None:
        """A connection is about to wait for messages on ``queues`` (those of its consumers with room in
        their prefetch windows; ``consuming``: it has consumers, with room or not). Returns 0 when one of
        the queues has ready messages (or the store has work to do first), else the seconds until the
        store's next deadline, None for none. Applies the deadlines that are due, and notices queues
        deleted by others (``listener.queues_deleted``)."""
