"""The store's topology operations as the session offers them: each checked against the connection first
(a closed connection raises UsageError), then run by the store, which raises the refusals (NotFound,
PreconditionFailed, ResourceLocked, AccessRefused)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from kelp._broker.core.store import Store
from kelp._envelope import Envelope, QueueInfo

__all__ = ["TopologyCalls"]

S = TypeVar("S", bound=Store)


class TopologyCalls(Generic[S]):
    """Declarations, bindings, stats and publishing: what needs no session state but the connection."""

    store: S

    def alive(self, connection_id: int) -> None:
        """Raise UsageError unless the connection is open."""
        raise NotImplementedError

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
        if name:  # the default exchange always exists
            self.store.declare_exchange(name, type_, durable, auto_delete, internal, arguments, passive)

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self.store.delete_exchange(name, if_unused)

    def declare_queue(
        self,
        connection_id: int,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        self.alive(connection_id)
        return self.store.declare_queue(
            connection_id, name, durable, exclusive, auto_delete, arguments, passive
        )

    def delete_queue(self, connection_id: int, name: str, if_unused: bool, if_empty: bool) -> int:
        self.alive(connection_id)
        return self.store.delete_queue(connection_id, name, if_unused, if_empty)

    def purge_queue(self, connection_id: int, name: str) -> int:
        self.alive(connection_id)
        return self.store.purge_queue(connection_id, name)

    def bind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self.alive(connection_id)
        self.store.bind(connection_id, kind, destination, source, routing_key, arguments)

    def unbind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self.alive(connection_id)
        self.store.unbind(connection_id, kind, destination, source, routing_key, arguments)

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        """``(source, kind, destination, routing_key, arguments)`` for every binding."""
        return self.store.bindings()

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Route and store each envelope; return the mandatory ones no queue took (to be returned).
        Raises MessageNacked after storing the rest when a full ``reject-publish`` queue refused one."""
        return self.store.publish(envelopes)
