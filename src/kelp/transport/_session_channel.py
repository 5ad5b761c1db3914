# Generated from src/kelp/aio/transport/_session_channel.py by scripts/unasync.py; do not edit.
"""The channel and the drain loop of every broker kelp runs itself (memory, sqlite, postgres): each AMQP
method is the broker core's session method of the same name (``kelp._broker.core.session``), for this
connection and channel, and :class:`SessionTransport` waits for the session's deliveries.

Nothing happens to messages here that the session does not do: declarations, routing and storage go to the
store, deliveries and acks to the session's unacked bookkeeping. A transport whose store may block (disk,
network, another process's lock) sets ``blocking``, and the asyncio face then calls the session from a
worker thread; the sync face calls it directly.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from kelp._backend import Signal, monotonic, run_blocking
from kelp._broker.core.session import Session
from kelp._broker.core.store import Store
from kelp._envelope import Delivery, Envelope, QueueInfo
from kelp.exceptions import OperationalError
from kelp.transport.base import Transport, TransportChannel, queue_deleted
from kelp.url import URL

__all__ = ["SessionChannel", "SessionTransport"]

T = TypeVar("T")
S = TypeVar("S", bound=Session[Any])


def call_session(blocking: bool, function: Callable[..., T], *args: Any) -> T:
    """Call a session method: from a worker thread on the asyncio face when the store may block; directly
    on the sync face, blocking or not."""
    return function(*args)


class SessionChannel(TransportChannel):
    """A channel over a broker-core session (see the module docstring)."""

    #: Whether the session's calls may block (then the asyncio face runs them in a worker thread).
    blocking: ClassVar[bool] = True

    def __init__(self, session: Session[Any], connection_id: int) -> None:
        self._session = session
        self._connection_id = connection_id
        self.channel_id = session.open_channel(connection_id)

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        return call_session(self.blocking, function, *args)

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
        session = self._session
        self._call(session.declare_exchange, name, type, durable, auto_delete, internal, arguments, passive)

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self._call(self._session.delete_exchange, name, if_unused)

    def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        return self._call(
            self._session.declare_queue,
            self._connection_id,
            name,
            durable,
            exclusive,
            auto_delete,
            arguments,
            passive,
        )

    def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        return self._call(self._session.delete_queue, self._connection_id, name, if_unused, if_empty)

    def purge_queue(self, name: str) -> int:
        return self._call(self._session.purge_queue, self._connection_id, name)

    def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        self._call(self._session.bind, self._connection_id, kind, destination, source, routing_key, arguments)

    def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        session = self._session
        self._call(session.unbind, self._connection_id, kind, destination, source, routing_key, arguments)

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return self._call(self._session.publish, envelopes)

    def qos(self, prefetch_count: int, global_: bool) -> None:
        # Bookkeeping in this process only: never blocks.
        self._session.qos(self._connection_id, self.channel_id, prefetch_count, global_)

    def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        return self._call(
            self._session.consume, self._connection_id, self.channel_id, queue, consumer_tag, no_ack
        )

    def cancel(self, consumer_tag: str) -> None:
        self._call(self._session.cancel, self._connection_id, self.channel_id, consumer_tag)

    def get(self, queue: str, no_ack: bool) -> Delivery | None:
        return self._call(self._session.get, self._connection_id, self.channel_id, queue, no_ack)

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        self._call(self._session.ack, self._connection_id, self.channel_id, delivery_tag, multiple)

    def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        self._call(
            self._session.reject, self._connection_id, self.channel_id, delivery_tag, requeue, multiple
        )

    def recover(self, requeue: bool) -> None:
        self._call(self._session.recover, self._connection_id, self.channel_id, requeue)

    def close(self) -> None:
        self._call(self._session.close_channel, self._connection_id, self.channel_id)

    def cancel_delayed(self, message_id: str) -> int:
        store: Store = self._session.store
        return self._call(store.cancel_delayed, message_id)


class SessionTransport(Transport, Generic[S]):
    """A connection to a broker-core session: the drain loop, queue stats and bindings, written once.

    A subclass connects and closes (``_connection_id`` from ``Session.connect(self._signal)``) and says
    which session it is connected to (:meth:`_current_session`), whether its calls may block
    (``blocking``) and, if its connection can be lost under it, how to notice (:meth:`_check_alive`).
    """

    #: Whether the session's calls may block (then the asyncio face runs them in a worker thread).
    blocking: ClassVar[bool] = True

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._connection_id = 0
        #: Set by the session when this connection may have work: a message, a cancelled consumer.
        self._signal = Signal()

    @abc.abstractmethod
    def _current_session(self) -> S | None:
        """The session this transport is connected to; None when closed."""

    def _live_session(self) -> S:
        session = self._current_session()
        if session is None:
            raise OperationalError(f"the {self.schemes[0]}:// connection is closed")
        return session

    def _check_alive(self, session: S) -> None:
        """Raise OperationalError when the connection was lost under the session (each turn of drain)."""

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        return call_session(self.blocking, function, *args)

    def drain(self, timeout: float | None) -> list[Delivery]:
        """Wait up to ``timeout`` seconds (None: forever) for deliveries to this connection's consumers,
        up to each prefetch window; raise TimeoutError if none came.

        A consumer cancelled because its queue was deleted is raised as ConsumerCancelled, once. When the
        session's calls block, they claim into the session's outbox in a worker thread and the
        deliveries are taken here, with no suspension point between taking and returning: an asyncio
        drain cancelled while it claims leaves its claims to the next drain, nothing is lost."""
        session = self._live_session()
        connection_id = self._connection_id
        blocking = self.blocking
        deadline = None if timeout is None else monotonic() + timeout
        try:
            while True:
                self._check_alive(session)
                cancelled = session.take_cancelled(connection_id)
                if cancelled is not None:
                    raise queue_deleted(*cancelled)
                if blocking:
                    deliveries = session.take(connection_id)
                    if not deliveries:
                        run_blocking(session.fill, connection_id)
                        deliveries = session.take(connection_id)
                else:
                    deliveries = session.claim(connection_id)
                if deliveries:
                    return deliveries
                # Cleared before prepare_wait: a message arriving in between sets it, and is not missed.
                self._signal.clear()
                wait = self._call(session.prepare_wait, connection_id)
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0 and wait != 0.0:
                    raise TimeoutError("no message arrived within the timeout")
                if wait is None or (remaining is not None and remaining < wait):
                    wait = remaining
                if wait is None or wait > 0:
                    self._signal.wait(wait)
                if self._current_session() is None:
                    raise OperationalError(f"the {self.schemes[0]}:// connection was closed while draining")
        finally:
            session.end_wait(connection_id)

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        return self._call(self._live_session().queue_stats)

    def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return self._call(self._live_session().bindings)
