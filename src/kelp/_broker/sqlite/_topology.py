"""A process's cached snapshot of the exchanges, queues and bindings stored in the database.

Routing happens in Python with :mod:`kelp.routing`, against a snapshot of the version the database's
topology had (bumped by every declare, bind, unbind and delete, in any process). Each bump also writes a row
to ``topology_log`` naming what changed, so a process whose snapshot is behind derives the next snapshot from
its own by re-reading only those exchanges, queues and bindings (:func:`refresh_topology`): declaring one
more queue costs the same at 10 queues as at 10,000. A snapshot too old for the log (or a change the log
cannot name) is rebuilt from the tables. Snapshots are immutable once built and shared between threads (a
derived one copies what it changes and shares the rest); routing is serialised by a lock that a snapshot
shares with those derived from it, since a binding table memoises answers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from kelp._broker.queue_args import ExchangeDef, QueueDef
from kelp.exceptions import InconsistencyError, NotFound
from kelp.routing import BindingTable, Destination, route

__all__ = [
    "LOG_KEEP",
    "ExchangeDef",
    "Topology",
    "binding_key",
    "load_topology",
    "refresh_topology",
]

_MEMO_SIZE = 4096

#: How many topology changes the log keeps: a process further behind rebuilds its snapshot from the tables.
LOG_KEEP = 4096


def binding_key(arguments: Mapping[str, Any] | None) -> str:
    """The canonical stored form of binding arguments (equal tables give equal text)."""
    return json.dumps(dict(arguments or {}), sort_keys=True, separators=(",", ":"))


class Topology:
    """Exchanges, queues and binding tables at one topology version."""

    def __init__(
        self,
        version: int,
        exchanges: dict[str, ExchangeDef],
        queues: dict[str, QueueDef],
        expiring: int | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.version = version
        self.exchanges = exchanges
        self.queues = queues
        if expiring is None:
            expiring = sum(q.args.expires is not None for q in queues.values())
        self.expiring = expiring  # how many queues have x-expires
        self.has_expiring_queues = expiring > 0
        # A derived snapshot shares its unchanged binding tables, and so this lock, with the one before.
        self._lock = lock or threading.Lock()
        # Exchanges whose routing depends on the routing key alone (no headers exchange, no exchange
        # bindings, no alternate exchange): their answers are remembered per routing key.
        self._simple = {
            name
            for name, exchange in exchanges.items()
            if exchange.type != "headers"
            and "alternate-exchange" not in exchange.arguments
            and not exchange.table.routes_to_exchanges
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


_EXCHANGE_COLUMNS = "SELECT name, type, durable, auto_delete, internal, arguments FROM exchanges"
_QUEUE_COLUMNS = "SELECT name, durable, exclusive_owner, auto_delete, arguments FROM queues"


def _exchange(name: str, type_: str, durable: int, auto_delete: int, internal: int, args: str) -> ExchangeDef:
    return ExchangeDef(name, type_, bool(durable), bool(auto_delete), bool(internal), json.loads(args))


def _queue(name: str, durable: int, owner: int | None, auto_delete: int, args: str) -> QueueDef:
    return QueueDef(name, bool(durable), owner, bool(auto_delete), json.loads(args))


def load_topology(db: sqlite3.Connection, version: int) -> Topology:
    """Read the whole topology (inside the caller's transaction, so it is consistent with ``version``)."""
    try:
        exchanges = {row[0]: _exchange(*row) for row in db.execute(_EXCHANGE_COLUMNS)}
        queues = {row[0]: _queue(*row) for row in db.execute(_QUEUE_COLUMNS)}
        for source, kind, destination, routing_key, args in db.execute(
            "SELECT source, kind, destination, routing_key, arguments FROM bindings"
        ):
            exchange = exchanges.get(source)
            if exchange is not None:
                exchange.table.add(Destination(kind, destination), routing_key, json.loads(args))
    except (ValueError, TypeError) as exc:
        raise InconsistencyError(f"the kelp database holds an unreadable declaration: {exc}") from None
    return Topology(version, exchanges, queues)


def refresh_topology(db: sqlite3.Connection, topo: Topology, version: int) -> Topology:
    """The snapshot at ``version``: ``topo`` itself, one derived from it through the log, or a new one.

    Call inside the caller's transaction. Derivation re-reads each exchange, queue and binding the log
    names since ``topo.version`` and copies only the binding tables that change.
    """
    if version == topo.version:
        return topo
    if topo.version < 0 or version < topo.version or version - topo.version > LOG_KEEP:
        return load_topology(db, version)
    changes = db.execute(
        "SELECT entity, name, kind, destination, routing_key, arguments FROM topology_log "
        "WHERE version > ? AND version <= ? ORDER BY version",
        (topo.version, version),
    ).fetchall()
    # A gap (a writer that does not log) or a change the log cannot name: read everything.
    if len(changes) != version - topo.version or any(change[0] == "*" for change in changes):
        return load_topology(db, version)
    try:
        return _Derivation(db, topo).apply(changes, version)
    except (ValueError, TypeError) as exc:
        raise InconsistencyError(f"the kelp database holds an unreadable declaration: {exc}") from None


class _Derivation:
    """A snapshot being derived from an older one: its dicts are copies, its changed tables too."""

    def __init__(self, db: sqlite3.Connection, topo: Topology) -> None:
        self.db = db
        self.lock = topo._lock
        self.exchanges = dict(topo.exchanges)
        self.queues = topo.queues  # copied before the first change to a queue
        self.expiring = topo.expiring
        self.copied: set[str] = set()  # exchanges whose table this snapshot owns

    def table(self, name: str) -> BindingTable | None:
        exchange = self.exchanges.get(name)
        if exchange is None:
            return None
        if name not in self.copied:
            clone = ExchangeDef(
                name,
                exchange.type,
                exchange.durable,
                exchange.auto_delete,
                exchange.internal,
                exchange.arguments,
            )
            clone.table = exchange.table.copy()
            self.exchanges[name] = exchange = clone
            self.copied.add(name)
        return exchange.table

    def unbind_everywhere(self, destination: Destination) -> None:
        for name, exchange in list(self.exchanges.items()):
            if exchange.table.has_destination(destination):
                table = self.table(name)
                assert table is not None
                table.remove_destination(destination)

    def bind_stored(self, destination: Destination) -> None:
        """Add the stored bindings to ``destination`` (a queue or exchange just read again)."""
        for source, routing_key, args in self.db.execute(
            "SELECT source, routing_key, arguments FROM bindings WHERE kind=? AND destination=?", destination
        ).fetchall():
            table = self.table(source)
            if table is not None:
                table.add(destination, routing_key, json.loads(args))

    def apply(self, changes: list[tuple[Any, ...]], version: int) -> Topology:
        db = self.db
        # What changed, each once; re-read as it is now, exchanges first so bindings find their tables.
        exchanges = dict.fromkeys(c[1] for c in changes if c[0] == "exchange")
        queues = dict.fromkeys(c[1] for c in changes if c[0] == "queue")
        bindings = dict.fromkeys(tuple(c[1:]) for c in changes if c[0] == "binding")
        for name in exchanges:
            self.exchanges.pop(name, None)
            self.copied.discard(name)
            destination = Destination.exchange(name)
            self.unbind_everywhere(destination)
            row = db.execute(f"{_EXCHANGE_COLUMNS} WHERE name=?", (name,)).fetchone()
            if row is None:
                continue
            self.exchanges[name] = exchange = _exchange(*row)
            self.copied.add(name)
            for kind, target, routing_key, args in db.execute(
                "SELECT kind, destination, routing_key, arguments FROM bindings WHERE source=?", (name,)
            ):
                exchange.table.add(Destination(kind, target), routing_key, json.loads(args))
            self.bind_stored(destination)
        if queues:
            self.queues = dict(self.queues)
        for name in queues:
            old = self.queues.pop(name, None)
            if old is not None and old.args.expires is not None:
                self.expiring -= 1
            destination = Destination.queue(name)
            self.unbind_everywhere(destination)
            row = db.execute(f"{_QUEUE_COLUMNS} WHERE name=?", (name,)).fetchone()
            if row is None:
                continue
            self.queues[name] = queue = _queue(*row)
            if queue.args.expires is not None:
                self.expiring += 1
            self.bind_stored(destination)
        for source, kind, target, routing_key, args in bindings:
            table = self.table(source)
            if table is None:
                continue
            stored = db.execute(
                "SELECT 1 FROM bindings WHERE source=? AND kind=? AND destination=? AND routing_key=? "
                "AND arguments=?",
                (source, kind, target, routing_key, args),
            ).fetchone()
            if stored is not None:
                table.add(Destination(kind, target), routing_key, json.loads(args))
            else:
                table.remove(Destination(kind, target), routing_key, json.loads(args))
        return Topology(version, self.exchanges, self.queues, self.expiring, self.lock)
