"""A process's cached snapshot of the exchanges, queues and bindings stored in the database.

Routing happens in Python with :mod:`kelp.routing`, against a snapshot rebuilt whenever the database's
topology version (bumped by every declare, bind, unbind and delete, in any process) differs from the one the
snapshot was built at. Snapshots are immutable once built and shared between threads; routing through one
is serialised by its own lock, since a topic table memoises answers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from kelp._broker.queue_args import ExchangeDef, QueueArgs
from kelp.exceptions import InconsistencyError, NotFound
from kelp.routing import BindingTable, Destination, route

__all__ = ["ExchangeDef", "QueueDef", "Topology", "binding_key", "load_topology"]

_MEMO_SIZE = 4096


class QueueDef:
    __slots__ = ("args", "arguments", "auto_delete", "durable", "exclusive_owner", "name")

    def __init__(
        self,
        name: str,
        durable: bool,
        exclusive_owner: int | None,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.args = QueueArgs.parse(arguments)


def binding_key(arguments: Mapping[str, Any] | None) -> str:
    """The canonical stored form of binding arguments (equal tables give equal text)."""
    return json.dumps(dict(arguments or {}), sort_keys=True, separators=(",", ":"))


class Topology:
    """Exchanges, queues and binding tables at one topology version."""

    def __init__(self, version: int, exchanges: dict[str, ExchangeDef], queues: dict[str, QueueDef]) -> None:
        self.version = version
        self.exchanges = exchanges
        self.queues = queues
        self.has_expiring_queues = any(q.args.expires is not None for q in queues.values())
        self._lock = threading.Lock()
        # Exchanges whose routing depends on the routing key alone (no headers exchange, no exchange
        # bindings, no alternate exchange): their answers are remembered per routing key.
        self._simple = {
            name
            for name, exchange in exchanges.items()
            if exchange.type != "headers"
            and "alternate-exchange" not in exchange.arguments
            and all(d.kind == "queue" for d in exchange.table.destinations())
        }
        # Answers of route(), with the plain() of each, remembered per (exchange, routing key) for the
        # default exchange and the simple ones.
        self._routed: dict[tuple[str, str], tuple[list[str], bool | None]] = {}

    def _lookup(self, name: str) -> BindingTable | None:
        exchange = self.exchanges.get(name)
        return exchange.table if exchange is not None else None

    def route(self, exchange_name: str, routing_key: str, headers: Mapping[str, Any] | None) -> list[str]:
        """The queues a message reaches (alternate exchange included); NotFound for a missing exchange."""
        return self.routed(exchange_name, routing_key, headers)[0]

    def routed(
        self, exchange_name: str, routing_key: str, headers: Mapping[str, Any] | None
    ) -> tuple[list[str], bool | None]:
        """:meth:`route` and :meth:`plain` of its answer in one lookup (the publish fast path)."""
        key = (exchange_name, routing_key)
        found = self._routed.get(key)
        if found is not None:
            return found
        if exchange_name:
            targets = self._route(exchange_name, routing_key, headers)
        else:
            targets = [routing_key] if routing_key in self.queues else []
        found = (targets, self.plain(targets))
        if not exchange_name or exchange_name in self._simple:
            if len(self._routed) >= _MEMO_SIZE:
                self._routed.clear()
            self._routed[key] = found
        return found

    def plain(self, targets: list[str]) -> bool | None:
        """How buffered publishes to ``targets`` are stored: True when no target has a rule to apply at
        commit time (bounds, priorities, message TTL), False when some has one but never refuses a
        message, None when some may refuse it (``x-overflow: reject-publish[-dlx]``)."""
        found: bool | None = True
        for name in targets:
            args = self.queues[name].args
            if args.bounded or args.max_priority or args.message_ttl is not None:
                if args.overflow != "drop-head" and args.bounded:
                    return None
                found = False
        return found

    def _route(self, exchange_name: str, routing_key: str, headers: Mapping[str, Any] | None) -> list[str]:
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            raise NotFound(f"no exchange '{exchange_name}' in vhost '/'")
        with self._lock:
            names = route(self._lookup, exchange_name, routing_key, headers)
            if not names:
                alternate = exchange.arguments.get("alternate-exchange")
                if isinstance(alternate, str) and alternate in self.exchanges:
                    names = route(self._lookup, alternate, routing_key, headers)
        queues = self.queues
        return [name for name in names if name in queues]

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return [
            (name, b.destination.kind, b.destination.name, b.routing_key, dict(b.arguments))
            for name, exchange in self.exchanges.items()
            for b in exchange.table
        ]


EMPTY = Topology(-1, {}, {})


def load_topology(db: sqlite3.Connection, version: int) -> Topology:
    """Read the whole topology (inside the caller's transaction, so it is consistent with ``version``)."""
    try:
        exchanges = {
            name: ExchangeDef(name, type_, bool(durable), bool(auto_delete), bool(internal), json.loads(args))
            for name, type_, durable, auto_delete, internal, args in db.execute(
                "SELECT name, type, durable, auto_delete, internal, arguments FROM exchanges"
            )
        }
        queues = {
            name: QueueDef(name, bool(durable), owner, bool(auto_delete), json.loads(args))
            for name, durable, owner, auto_delete, args in db.execute(
                "SELECT name, durable, exclusive_owner, auto_delete, arguments FROM queues"
            )
        }
        for source, kind, destination, routing_key, args in db.execute(
            "SELECT source, kind, destination, routing_key, arguments FROM bindings"
        ):
            exchange = exchanges.get(source)
            if exchange is not None:
                exchange.table.add(Destination(kind, destination), routing_key, json.loads(args))
    except (ValueError, TypeError) as exc:
        raise InconsistencyError(f"the kelp database holds an unreadable declaration: {exc}") from None
    return Topology(version, exchanges, queues)
