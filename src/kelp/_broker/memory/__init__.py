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

import threading
import time
from collections.abc import Callable

from kelp._broker.core.session import Session
from kelp._broker.memory._store import MemoryStore

__all__ = ["MemoryBroker", "MemoryStore", "broker_for"]


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
