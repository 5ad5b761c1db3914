"""Declarations on ``postgresql://``: exchanges, queues, bindings and consumers, with RabbitMQ's checks.

Each change runs in one transaction holding the topology lock exclusively (so it is ordered against
every publish, see ``_route``) and bumps the topology counter; the checks read the current snapshot.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from psycopg import Cursor, sql

from kelp._broker.postgres._route import QueueDef, Topology
from kelp._broker.queue_args import (
    ExchangeDef,
    QueueArgs,
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


class TopologyOps(abc.ABC):
    """The topology half of the store (PostgresStore provides the sessions)."""

    name: str
    channel: str
    listener: Any

    @abc.abstractmethod
    def q(self, text: str) -> sql.Composed: ...

    @abc.abstractmethod
    def locked(
        self, exclusive: bool = False
    ) -> contextlib.AbstractContextManager[tuple[Cursor[Any], Topology]]: ...

    @abc.abstractmethod
    def cursor(self) -> contextlib.AbstractContextManager[Cursor[Any]]: ...

    @abc.abstractmethod
    def forget_topology(self) -> None: ...

    @abc.abstractmethod
    def due(self, seconds: float | None) -> None: ...

    @abc.abstractmethod
    def tick(self) -> None: ...

    @abc.abstractmethod
    def flush_acks(self, cur: Cursor[Any] | None = None) -> None: ...

    @contextlib.contextmanager
    def changing(self) -> Iterator[tuple[Cursor[Any], Topology]]:
        """A topology change: exclusive lock, current snapshot; the counter is bumped on success."""
        try:
            with self.locked(exclusive=True) as (cur, topo):
                yield cur, topo
                cur.execute(self.q("UPDATE {s}.meta SET value = value + 1 WHERE key = 'topology'"))
        finally:
            self.forget_topology()

    def _missing(self, kind: str, name: str) -> NotFound:
        return NotFound(f"no {kind} '{name}' in vhost '/'")

    def _queue(self, topo: Topology, owner: int | None, name: str) -> QueueDef:
        queue = topo.queues.get(name)
        if queue is None:
            raise self._missing("queue", name)
        if owner is not None and queue.exclusive_owner is not None and queue.exclusive_owner != owner:
            raise ResourceLocked(
                f"cannot obtain exclusive access to locked queue '{name}': it belongs to another connection"
            )
        return queue

    def _count(self, cur: Cursor[Any], text: str, *params: Any) -> int:
        cur.execute(self.q(text), params)
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def _ready(self, cur: Cursor[Any], name: str) -> int:
        return self._count(
            cur,
            "SELECT count(*) FROM {s}.messages WHERE queue = %s AND owner IS NULL "
            "AND (expires_at IS NULL OR expires_at > {now})",
            name,
        )

    def _consumers(self, cur: Cursor[Any], name: str) -> int:
        return self._count(cur, "SELECT count(*) FROM {s}.consumers WHERE queue = %s", name)

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
        with self.locked() as (_, topo):
            existing = topo.exchanges.get(name)
        if passive:
            if existing is None:
                raise self._missing("exchange", name)
            return
        check_name("exchange", name, passive)
        requested = (type_, durable, auto_delete, internal, arguments)
        if existing is not None:
            check_exchange_redeclare(
                name,
                (
                    existing.type,
                    existing.durable,
                    existing.auto_delete,
                    existing.internal,
                    existing.arguments,
                ),
                requested,
            )
            return
        ExchangeDef(name, type_, durable, auto_delete, internal, {})  # refuses an unknown type
        with self.changing() as (cur, topo):
            existing = topo.exchanges.get(name)
            if existing is not None:  # declared meanwhile by another process
                check_exchange_redeclare(
                    name,
                    (
                        existing.type,
                        existing.durable,
                        existing.auto_delete,
                        existing.internal,
                        existing.arguments,
                    ),
                    requested,
                )
                return
            cur.execute(
                self.q("INSERT INTO {s}.exchanges VALUES (%s, %s, %s, %s, %s, %s)"),
                (name, type_, durable, auto_delete, internal, encode(dict(arguments or {}))),
            )

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
        cur.execute(self.q("DELETE FROM {s}.exchanges WHERE name = %s"), (name,))
        cur.execute(
            self.q("DELETE FROM {s}.bindings WHERE source = %s OR (kind = 'exchange' AND destination = %s)"),
            (name, name),
        )

    def _auto_delete_exchanges(self, cur: Cursor[Any], topo: Topology, sources: Collection[str]) -> None:
        for source in sources:
            exchange = topo.exchanges.get(source)
            if (
                exchange is not None
                and exchange.auto_delete
                and not self._count(cur, "SELECT count(*) FROM {s}.bindings WHERE source = %s", source)
            ):
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
        if passive:
            with self.locked() as (cur, topo):
                queue = self._queue(topo, owner, name)
                return QueueInfo(queue.name, self._ready(cur, name), self._consumers(cur, name))
        if name:
            check_name("queue", name, passive)
        requested = (durable, exclusive, auto_delete, arguments)
        with self.locked() as (cur, topo):
            existing = topo.queues.get(name) if name else None
            if existing is not None:
                self._queue(topo, owner, name)
                check_queue_redeclare(
                    name,
                    (
                        existing.durable,
                        existing.exclusive_owner is not None,
                        existing.auto_delete,
                        existing.arguments,
                    ),
                    requested,
                )
                cur.execute(self.q("UPDATE {s}.queues SET last_used = {now} WHERE name = %s"), (name,))
                return QueueInfo(name, self._ready(cur, name), self._consumers(cur, name))
        args = QueueArgs.parse(arguments)
        name = name or generated_queue_name()
        self.due(None if args.expires is None else args.expires / 1000)
        with self.changing() as (cur, topo):
            if name in topo.queues:  # declared meanwhile by another process
                existing = self._queue(topo, owner, name)
                check_queue_redeclare(
                    name,
                    (
                        existing.durable,
                        existing.exclusive_owner is not None,
                        existing.auto_delete,
                        existing.arguments,
                    ),
                    requested,
                )
                return QueueInfo(name, self._ready(cur, name), self._consumers(cur, name))
            cur.execute(
                self.q(
                    "INSERT INTO {s}.queues "
                    "(name, durable, exclusive_owner, auto_delete, arguments, expires_ms) "
                    "VALUES (%s, %s, %s, %s, %s, %s)"
                ),
                (
                    name,
                    durable,
                    owner if exclusive else None,
                    auto_delete,
                    encode(dict(arguments or {})),
                    args.expires,
                ),
            )
        return QueueInfo(name, 0, 0)

    def delete_queue(self, owner: int, name: str, if_unused: bool, if_empty: bool) -> int:
        with self.changing() as (cur, topo):
            if name not in topo.queues:
                return 0
            self._queue(topo, owner, name)
            if if_unused and self._consumers(cur, name):
                raise PreconditionFailed(f"queue '{name}' in use")
            count = self._ready(cur, name)
            if if_empty and count:
                raise PreconditionFailed(f"queue '{name}' not empty")
            self._drop_queues(cur, topo, [name])
        return count

    def delete_queues(self, names: Collection[str]) -> None:
        if not names:
            return
        with self.changing() as (cur, topo):
            self._drop_queues(cur, topo, [n for n in names if n in topo.queues])

    def _drop_queues(self, cur: Cursor[Any], topo: Topology, names: list[str]) -> None:
        """Delete queues with every copy in them (claimed ones too: a late ack finds nothing); their
        consumers are cancelled in every process."""
        if not names:
            return
        cur.execute(self.q("DELETE FROM {s}.queues WHERE name = ANY(%s)"), (names,))
        cur.execute(self.q("DELETE FROM {s}.messages WHERE queue = ANY(%s)"), (names,))
        cur.execute(self.q("DELETE FROM {s}.consumers WHERE queue = ANY(%s)"), (names,))
        cur.execute(
            self.q(
                "DELETE FROM {s}.bindings WHERE kind = 'queue' AND destination = ANY(%s) RETURNING source"
            ),
            (names,),
        )
        sources = {row[0] for row in cur.fetchall()}
        for name in names:
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, "d:" + name))
        self._auto_delete_exchanges(cur, topo, sources)
        if self.listener is not None:
            self.listener.queues_deleted(set(names))

    def purge_queue(self, owner: int, name: str) -> int:
        with self.locked() as (cur, topo):
            self._queue(topo, owner, name)
            cur.execute(self.q("DELETE FROM {s}.messages WHERE queue = %s AND owner IS NULL"), (name,))
            return cur.rowcount

    def check_queue(self, owner: int, name: str, touch: bool = False) -> None:
        with self.locked() as (cur, topo):
            self._queue(topo, owner, name)
            if touch:
                cur.execute(self.q("UPDATE {s}.queues SET last_used = {now} WHERE name = %s"), (name,))

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
                raise self._missing("exchange", source)
            if kind == "queue":
                self._queue(topo, owner, destination)
            elif destination not in topo.exchanges:
                raise self._missing("exchange", destination)
            args = dict(arguments or {})
            exchange.table.add(binding_destination(kind, destination), routing_key, args)  # validates x-match
            cur.execute(
                self.q("INSERT INTO {s}.bindings VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"),
                (source, kind, destination, routing_key, encode(args)),
            )

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
            cur.execute(
                self.q(
                    "DELETE FROM {s}.bindings WHERE source = %s AND kind = %s AND destination = %s "
                    "AND routing_key = %s AND arguments = %s"
                ),
                (source, kind, destination, routing_key, encode(dict(arguments or {}))),
            )
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
            cur.execute(
                self.q("INSERT INTO {s}.consumers VALUES (%s, %s, %s, %s)"), (owner, channel, tag, queue)
            )
            cur.execute(
                self.q("UPDATE {s}.queues SET had_consumer = true, last_used = {now} WHERE name = %s"),
                (queue,),
            )

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        with self.cursor() as cur, cur.connection.transaction():
            cur.execute(
                self.q(
                    "DELETE FROM {s}.consumers WHERE connection = %s AND channel = %s AND tag = %s "
                    "RETURNING queue"
                ),
                (owner, channel, tag),
            )
            empty = self.consumers_left(cur, {row[0] for row in cur.fetchall()})
        self.delete_queues(empty)

    def consumers_left(self, cur: Cursor[Any], queues: Collection[str]) -> list[str]:
        """Consumers left ``queues``: renew their x-expires lease; return the auto-delete ones left with
        none (they had one), for the caller to delete once its transaction is committed."""
        if not queues:
            return []
        cur.execute(
            self.q(
                "UPDATE {s}.queues q SET last_used = {now} WHERE name = ANY(%s) "
                "RETURNING name, auto_delete AND "
                "had_consumer AND NOT EXISTS (SELECT 1 FROM {s}.consumers c WHERE c.queue = q.name)"
            ),
            (list(queues),),
        )
        return [name for name, unused in cur.fetchall() if unused]

    def queue_stats(self, unacked: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
        self.flush_acks()
        with self.cursor() as cur:
            cur.execute(
                self.q(
                    "SELECT q.name, "
                    "(SELECT count(*) FROM {s}.messages m WHERE m.queue = q.name AND m.owner IS NULL), "
                    "(SELECT count(*) FROM {s}.messages m WHERE m.queue = q.name AND m.owner IS NOT NULL), "
                    "(SELECT count(*) FROM {s}.consumers c WHERE c.queue = q.name) "
                    "FROM {s}.queues q ORDER BY q.name"
                )
            )
            return [(name, int(r), int(u), int(c)) for name, r, u, c in cur.fetchall()]
