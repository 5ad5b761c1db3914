# Generated from src/kelp/aio/transport/memory.py by scripts/unasync.py; do not edit.
"""``memory://``: the in-process transport, with RabbitMQ's semantics (also the test broker users get).

``memory://`` and ``memory://name`` name process-wide brokers; connections to the same name share
exchanges, queues and messages, from any thread and from both the sync and the asyncio API. Nothing
survives the process: every message is transient here, whatever its delivery mode. Unacked messages return
to their queue, flagged ``redelivered``, when their channel or connection closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from kelp._backend import Signal, monotonic
from kelp._broker.memory import MemoryBroker, broker_for
from kelp._envelope import Delivery
from kelp.exceptions import OperationalError
from kelp.transport._session_channel import SessionChannel
from kelp.transport.base import (
    DEFAULT_IMPLEMENTS,
    Implements,
    Transport,
    kelp_version,
    queue_deleted,
)

__all__ = ["MemoryChannel", "MemoryTransport"]


class MemoryChannel(SessionChannel):
    """A channel of an in-process broker: the session's calls never block."""

    blocking: ClassVar[bool] = False


class MemoryTransport(Transport):
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(delayed_delivery=True)
    query_options: ClassVar[frozenset[str] | None] = frozenset()

    driver_type: ClassVar[str] = "memory"
    driver_name: ClassVar[str] = "memory"

    def driver_version(self) -> str:
        return kelp_version()

    def __init__(self, url: Any, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self._broker: MemoryBroker | None = None
        self._connection_id = 0
        self._signal = Signal()

    @property
    def is_connected(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise OperationalError("the memory:// connection is closed")
        return self._broker

    def connect(self, timeout: float | None) -> None:
        if self._broker is None:
            broker = broker_for(self.url.hostname or "")
            self._connection_id = broker.connect(self._signal)
            self._broker = broker

    def close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.disconnect(self._connection_id)

    def open_channel(self) -> MemoryChannel:
        return MemoryChannel(self.broker, self._connection_id)

    def drain(self, timeout: float | None) -> list[Delivery]:
        broker = self.broker
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            cancelled = broker.take_cancelled(self._connection_id)
            if cancelled is not None:
                raise queue_deleted(*cancelled)
            deliveries = broker.claim(self._connection_id)
            if deliveries:
                return deliveries
            self._signal.clear()
            wait = broker.prepare_wait(self._connection_id)
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0 and wait != 0.0:
                raise TimeoutError("no message arrived within the timeout")
            if wait is None or (remaining is not None and remaining < wait):
                wait = remaining
            if wait is None or wait > 0:
                self._signal.wait(wait)
            if self._broker is None:
                raise OperationalError("the memory:// connection was closed while draining")

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        return self.broker.queue_stats()

    def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return self.broker.bindings()
