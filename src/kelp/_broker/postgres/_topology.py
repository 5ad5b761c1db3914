"""Declarations on ``postgresql://``: exchanges, queues, bindings and consumers, with RabbitMQ's checks.

Each change runs in one transaction ordered against every publish (``Database.locked``, exclusive) and
bumps the topology counter; the checks read the current snapshot.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from psycopg import Cursor

from kelp._broker.postgres._db import Database
from kelp._broker.postgres._route import Topology
from kelp._broker.queue_args import (
    ExchangeDef,
    QueueArgs,
    QueueDef,
    binding_destination,
    check_exchange_redeclare,
    check_name,
    check_queue_redeclare,
    generated_queue_name,
)
from kelp._broker.sqlite._codec import encode
from kelp._envelope import QueueInfo
from kelp.exceptions import AccessRefused, NotFound, PreconditionFailed, ResourceLocked

__all__ = ["TopologyOps"]

_READY = (
    "SELECT count(*) FROM {s}.messages WHERE queue = %s AND owner IS NULL "
    "AND (expires_at IS NULL OR expires_at > {now})"
)


class TopologyOps(Database, abc.ABC):
    """The topology half of the store."""

    listener: Any

    @abc.abstractmethod
    def due(self, seconds: float | None) -> None: ...

    @abc.abstractmethod
    def tick(self) -> None: ...

    @abc.abstractmethod
    def flush_acks(self, cur: Cursor[Any] | None = None) -> None: ...

    @abc.abstractmethod
    def owner_alive(self, owner: int) -> bool: ...

    @contextlib.contextmanager
    def changing(self) -> Iterator[tuple[Cursor[Any], Topology]]:
        """A topology change: exclusive, on the current snapshot; bumps the counter when it succeeds."""
        try:
            with self.locked(exclusive=True) as (cur, topo):
                yield cur, topo
                cur.execute(self.q("UPDATE {s}.meta SET value = value + 1 WHERE key = 'topology'"))
        finally:
            self.forget_topology()

    def _queue(self, topo: Topology, owner: int | None, name: str) -> QueueDef:
        queue = topo.queues.get(name)
        if queue is None:
            raise NotFound(f"no queue '{name}' in vhost '/'")
        if owner is not None and queue.exclusive_owner not in (None, owner):
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{name}': it belongs to another connection"
            )
        return queue

    def _info(self, cur: Cursor[Any], name: str) -> QueueInfo:
        consumers = self.one(cur, "SELECT count(*) FROM {s}.consumers WHERE queue = %s", name)
        return QueueInfo(name, self.one(cur, _READY, name), consumers)

    # --- exchanges ---------------------------------------------------------------------------------

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
        existing = self.topology().exchanges.get(name)
        if passive or existing is None:
            with self.locked() as (_, topo):  # a current answer
                existing = topo.exchanges.get(name)
        if passive:
            if existing is None:
                raise NotFound(f"no exchange '{name}' in vhost '/'")
            return
        check_name("exchange", name, passive)
        requested = (type_, durable, auto_delete, internal, arguments)
        if existing is None:
            ExchangeDef(name, type_, durable, auto_delete, internal, {})  # refuses an unknown type
            with self.changing() as (cur, topo):
                existing = topo.exchanges.get(name)  # declared meanwhile by another process?
                if existing is None:
                    args = encode(dict(arguments or {}))
                    self.rows(
                        cur,
                        "INSERT INTO {s}.exchanges VALUES (%s, %s, %s, %s, %s, %s)",
                        name,
                        *requested[:4],
                        args,
                    )
                    return
        check_exchange_redeclare(existing, *requested)

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if not name or name.startswith("amq."):
            raise AccessRefused(f"operation not permitted on the default or 'amq.*' exchange '{name}'")
        with self.changing() as (cur, topo):
            exchange = topo.exchanges.get(name)
            if exchange is None:
                return
            if if_unused and len(exchange.table):
                raise PreconditionFailed(f"exchange '{name}' in use")
            self._drop_exchange(cur, name)

    def _drop_exchange(self, cur: Cursor[Any], name: str) -> None:
        self.rows(cur, "DELETE FROM {s}.exchanges WHERE name = %s", name)
        self.rows(
            cur,
            "DELETE FROM {s}.bindings WHERE source = %s OR (kind = 'exchange' AND destination = %s)",
            name,
            name,
        )

    def _auto_delete_exchanges(self, cur: Cursor[Any], topo: Topology, sources: Collection[str]) -> None:
        for source in sources:
            exchange = topo.exchanges.get(source)
            used = exchange is None or not exchange.auto_delete
            if not used and not self.one(cur, "SELECT count(*) FROM {s}.bindings WHERE source = %s", source):
                self._drop_exchange(cur, source)

    # --- queues --------------------------------------------------------------------------------------

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
        self.tick()
        if not passive and name:
            check_name("queue", name, passive)
        requested = (durable, exclusive, auto_delete, arguments)
        with self.locked() as (cur, topo):
            if passive:
                return self._info(cur, self._queue(topo, owner, name).name)
            existing = topo.queues.get(name) if name else None
            if existing is not None:
                self._queue(topo, owner, name)
                check_queue_redeclare(name, existing, *requested)
                self.rows(cur, "UPDATE {s}.queues SET last_used = {now} WHERE name = %s", name)
                return self._info(cur, name)
        args = QueueArgs.parse(arguments)
        name = name or generated_queue_name()
        self.due(None if args.expires is None else args.expires / 1000)
        with self.changing() as (cur, topo):
            if name in topo.queues:  # declared meanwhile by another process
                check_queue_redeclare(name, self._queue(topo, owner, name), *requested)
                return self._info(cur, name)
            self.rows(
                cur,
                "INSERT INTO {s}.queues (name, durable, exclusive_owner, auto_delete, arguments, expires_ms) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                name, durable, owner if exclusive else None, auto_delete, encode(dict(arguments or {})),
                args.expires,
            )  # fmt: skip
        return QueueInfo(name, 0, 0)

    def delete_queue(self, owner: int, name: str, if_unused: bool, if_empty: bool) -> int:
        with self.changing() as (cur, topo):
            if name not in topo.queues:
                return 0
            self._queue(topo, owner, name)
            info = self._info(cur, name)
            if if_unused and info.consumer_count:
                raise PreconditionFailed(f"queue '{name}' in use")
            if if_empty and info.message_count:
                raise PreconditionFailed(f"queue '{name}' not empty")
            self._drop_queues(cur, topo, [name])
        return int(info.message_count)

    def delete_queues(self, names: Collection[str]) -> None:
        if names:
            with self.changing() as (cur, topo):
                self._drop_queues(cur, topo, [n for n in names if n in topo.queues])

    def _drop_queues(self, cur: Cursor[Any], topo: Topology, names: list[str]) -> None:
        """Delete queues with every copy in them (claimed ones too: a late ack finds nothing); their
        consumers are cancelled in every process."""
        if not names:
            return
        for table in ("queues", "messages", "delayed", "consumers", "counters"):
            column = "name" if table == "queues" else "queue"
            self.rows(cur, f"DELETE FROM {{s}}.{table} WHERE {column} = ANY(%s)", names)
        sources = self.rows(
            cur,
            "DELETE FROM {s}.bindings WHERE kind = 'queue' AND destination = ANY(%s) RETURNING source",
            names,
        )
        for name in names:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, "d:" + name))
        self._auto_delete_exchanges(cur, topo, {row[0] for row in sources})
        if self.listener is not None:
            self.listener.queues_deleted(set(names))

    def purge_queue(self, owner: int, name: str) -> int:
        with self.locked() as (cur, topo):
            self._queue(topo, owner, name)
            self.rows(cur, "DELETE FROM {s}.messages WHERE queue = %s AND owner IS NULL", name)
            return cur.rowcount

    def check_queue(self, owner: int, name: str) -> None:
        """Raise unless the queue exists and ``owner`` may use it; renews its x-expires lease."""
        with self.locked() as (cur, topo):
            self._queue(topo, owner, name)
            self.rows(cur, "UPDATE {s}.queues SET last_used = {now} WHERE name = %s", name)

    # --- bindings ------------------------------------------------------------------------------------

    def bind(
        self,
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        if not source:
            raise AccessRefused("operation not permitted on the default exchange")
        with self.changing() as (cur, topo):
            exchange = topo.exchanges.get(source)
            if exchange is None:
                raise NotFound(f"no exchange '{source}' in vhost '/'")
            if kind == "queue":
                self._queue(topo, owner, destination)
            elif destination not in topo.exchanges:
                raise NotFound(f"no exchange '{destination}' in vhost '/'")
            args = dict(arguments or {})
            exchange.table.add(binding_destination(kind, destination), routing_key, args)  # checks x-match
            self.rows(
                cur,
                "INSERT INTO {s}.bindings VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                source, kind, destination, routing_key, encode(args),
            )  # fmt: skip

    def unbind(
        self,
        owner: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        if not source:
            raise AccessRefused("operation not permitted on the default exchange")
        with self.changing() as (cur, topo):
            if kind == "queue":
                self._queue(topo, owner, destination)
            if source not in topo.exchanges:
                return
            self.rows(
                cur,
                "DELETE FROM {s}.bindings WHERE source = %s AND kind = %s AND destination = %s "
                "AND routing_key = %s AND arguments = %s",
                source, kind, destination, routing_key, encode(dict(arguments or {})),
            )  # fmt: skip
            if cur.rowcount:
                self._auto_delete_exchanges(cur, topo, [source])

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        with self.locked() as (_, topo):
            return [
                (name, b.destination.kind, b.destination.name, b.routing_key, dict(b.arguments))
                for name, exchange in topo.exchanges.items()
                for b in exchange.table
            ]

    # --- consumers -----------------------------------------------------------------------------------

    def consume(self, owner: int, channel: int, queue: str, tag: str) -> None:
        with self.locked() as (cur, topo):
            self._queue(topo, owner, queue)
            self.rows(cur, "INSERT INTO {s}.consumers VALUES (%s, %s, %s, %s)", owner, channel, tag, queue)
            self.rows(
                cur, "UPDATE {s}.queues SET had_consumer = true, last_used = {now} WHERE name = %s", queue
            )

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        if not self.owner_alive(owner):
            return  # its session is gone: whoever reaps it drops its consumers
        with self.cursor() as cur, cur.connection.transaction():
            left = self.rows(
                cur,
                "DELETE FROM {s}.consumers WHERE connection = %s AND channel = %s AND tag = %s "
                "RETURNING queue",
                owner, channel, tag,
            )  # fmt: skip
            empty = self.consumers_left(cur, {row[0] for row in left})
        self.delete_queues(empty)

    def consumers_left(self, cur: Cursor[Any], queues: Collection[str]) -> list[str]:
        """Consumers left ``queues``: renew their x-expires lease; return the auto-delete ones left with
        none (they had one), for the caller to delete once its transaction is committed."""
        if not queues:
            return []
        for name in queues:
            queue = self.topology().queues.get(name)
            self.due(None if queue is None or queue.args.expires is None else queue.args.expires / 1000)
        found = self.rows(
            cur,
            "UPDATE {s}.queues q SET last_used = {now} WHERE name = ANY(%s) RETURNING name, auto_delete "
            "AND had_consumer AND NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name)",
            list(queues),
        )
        return [name for name, unused in found if unused]
