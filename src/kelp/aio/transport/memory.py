"""``memory://``: the in-process transport, with RabbitMQ's semantics (also the test broker users get).

``memory://`` and ``memory://name`` name process-wide brokers; connections to the same name share
exchanges, queues and messages, from any thread and from both the sync and the asyncio API. Nothing
survives the process: every message is transient here, whatever its delivery mode. Unacked messages return
to their queue, flagged ``redelivered``, when their channel or connection closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from kelp._broker.memory import MemoryBroker, broker_for
from kelp.aio.transport._session_channel import SessionChannel, SessionTransport
from kelp.aio.transport.base import DEFAULT_IMPLEMENTS, Implements, kelp_version

__all__ = ["MemoryChannel", "MemoryTransport"]


class MemoryChannel(SessionChannel):
    """A channel of an in-process broker: the session's calls never block."""

    blocking: ClassVar[bool] = False


class MemoryTransport(SessionTransport[MemoryBroker]):
    """A connection to a process-wide broker: the session's calls never block, so they run on the
    calling thread (the event loop's, in ``kelp.aio``)."""

    blocking: ClassVar[bool] = False
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

    @property
    def is_connected(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> MemoryBroker:
        return self._live_session()

    def _current_session(self) -> MemoryBroker | None:
        return self._broker

    async def connect(self, timeout: float | None) -> None:
        if self._broker is None:
            broker = broker_for(self.url.hostname or "")
            self._connection_id = broker.connect(self._signal)
            self._broker = broker

    async def close(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            broker.disconnect(self._connection_id)

    async def open_channel(self) -> MemoryChannel:
        return MemoryChannel(self.broker, self._connection_id)
