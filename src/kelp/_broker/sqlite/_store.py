"""The engine behind ``sqlite://``: one :class:`SqliteStore` per (process, database file).

Every connection of a process to the same file shares the store, from any thread and from both faces.
The store owns a *writer* SQLite connection (all writes, serialised by ``_lock``, each a
``BEGIN IMMEDIATE`` transaction retried with bounded back-off while another process writes) and a
*reader* connection used for cheap checks that take no write lock (is there work, when is the next
deadline, did another process commit: ``PRAGMA data_version``).

Publishing. Publishes that need no answer from the broker are routed against the cached topology,
encoded and *buffered* (:mod:`._buffer`), in publish order. A persistent message is committed before its
publish returns (:meth:`SqliteStore.send`): by the publishing thread, with whatever else is buffered -
the publishes of other threads and tasks that arrived meanwhile share that commit - and, when it is alone,
by a single autocommitted INSERT. Transient messages and acks stay buffered for a group commit: the
buffer is applied, in order, at the start of the next write transaction of this process - any operation
(a persistent publish, claim, get, declare, close...), so a process always reads its own writes - or by
the flusher thread or the publishing thread (when and by whom: :mod:`._tuning`).

The flusher thread also polls ``data_version`` while some connection waits for messages (waking it when
another process committed), refreshes this process's heartbeat, reaps dead processes (their unacked
messages are released, flagged redelivered) and checkpoints the WAL (:mod:`._checkpoint`).

Consumers, channels, delivery tags and prefetch windows are the broker core's session layer
(:mod:`kelp._broker.core.session`, ``store.session``); this class is the storage protocol under it. The
store is built in layers, one job each: :mod:`._state` (shared state, reads without the write lock),
:mod:`._transactions` (write transactions and retries), :mod:`._liveness` (processes, heartbeats,
reaping), :mod:`._commit` (publishing and group commit), :mod:`._flusher` (the thread, opening and
closing), and this module (the protocol: owners, declarations, claims, settling, waiting). The rules as
they apply to rows are in :mod:`._ops`, :mod:`._declare`, :mod:`._dead_letter` and :mod:`._repair`;
timing constants in :mod:`._tuning`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from kelp._broker.core.session import Session
from kelp._broker.core.store import Claimer, Item, Unacked
from kelp._broker.malformed import Malformed, check_properties
from kelp._broker.sqlite import _dead_letter, _declare, _delayed, _deliveries, _ops, _repair
from kelp._broker.sqlite._codec import decode
from kelp._broker.sqlite._flusher import Flusher
from kelp._broker.sqlite._state import StoreOptions
from kelp._envelope import QueueInfo
from kelp.exceptions import (
    KelpError,
)

__all__ = ["SqliteStore", "StoreOptions", "store_for"]

logger = logging.getLogger("kelp.transport.sqlite")

C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class SqliteStore(Flusher):
    """All exchanges, queues and messages of one SQLite file, as seen from this process: the storage
    protocol of the broker core (:mod:`kelp._broker.core.store`) over the parts above."""

    def __init__(self, path: str, options: StoreOptions) -> None:
        super().__init__(path, options)
        self.session: Session[SqliteStore] = Session(self)

    # --- owners -------------------------------------------------------------------------------------------

    def connect(self) -> int:
        connection_id = self._run(self._insert_connection)
        self._owners.add(connection_id)
        return connection_id

    def disconnect(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """Release every message the connection holds (flagged redelivered), drop its consumers and
        exclusive queues."""
        if owner not in self._owners:
            return
        try:
            if self._lost is None:  # else nothing can be committed any more: forget the connection
                self._run(lambda tx: _declare.drop_connection(tx, owner))
        finally:
            self._owners.discard(owner)

    def close_channel(self, owner: int, channel: int, unacked: Sequence[Unacked]) -> None:
        ids = [(item.ref, owner) for item in unacked]

        def op(tx: _ops.Tx) -> None:
            _declare.close_channel(tx, owner, channel)
            if ids:
                _ops.release_rows(tx.db, ids)
                tx.touched.update(item.queue for item in unacked)

        self._run(op)

    # --- declarations -------------------------------------------------------------------------------------

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
        if not name:
            return
        self._run(
            lambda tx: _declare.declare_exchange(
                tx, name, type_, durable, auto_delete, internal, arguments, passive
            )
        )

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self._run(lambda tx: _declare.delete_exchange(tx, name, if_unused))

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
        return self._run(
            lambda tx: _declare.declare_queue(
                tx, connection_id, name, durable, exclusive, auto_delete, arguments, passive
            )
        )

    def delete_queue(self, connection_id: int, name: str, if_unused: bool, if_empty: bool) -> int:
        return self._run(
            lambda tx: _declare.delete_queue_checked(tx, connection_id, name, if_unused, if_empty)
        )

    def purge_queue(self, connection_id: int, name: str) -> int:
        return self._run(lambda tx: _declare.purge_queue(tx, connection_id, name))

    def bind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._run(
            lambda tx: _declare.bind(tx, connection_id, kind, destination, source, routing_key, arguments)
        )

    def unbind(
        self,
        connection_id: int,
        kind: str,
        destination: str,
        source: str,
        routing_key: str,
        arguments: Mapping[str, Any] | None,
    ) -> None:
        self._run(
            lambda tx: _declare.unbind(tx, connection_id, kind, destination, source, routing_key, arguments)
        )

    def queue_stats(self, unacked: Mapping[str, int] | None = None) -> list[tuple[str, int, int, int]]:
        """Counts from the file: the unacked copies of every process (``unacked`` is not needed)."""
        return self._run(_declare.queue_stats)

    def bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        return self._run(lambda tx: tx.topo.bindings())

    def cancel_delayed(self, message_id: str) -> int:
        """Drop the held copies of the delayed message ``message_id`` (committed); return how many."""
        return self._run(lambda tx: _delayed.cancel_delayed(tx, message_id))

    # --- consuming ----------------------------------------------------------------------------------------

    def consume(self, owner: int, channel: int, queue: str, tag: str) -> None:
        self._run(lambda tx: _declare.consume(tx, owner, channel, queue, tag))

    def cancel(self, owner: int, channel: int, tag: str) -> None:
        self._run(lambda tx: _declare.cancel_consumer(tx, owner, channel, tag))

    def claim(
        self, owner: int, plan: Sequence[tuple[K, Sequence[tuple[C, int]], int]], limit: int
    ) -> list[tuple[K, C, list[Item]]]:
        idle = not (self._pending.count or self._acks or self._releases) and time.time() < self._next_due
        if idle and not self._ready({consumer.queue for _, rooms, _ in plan for consumer, _ in rooms}):
            return []  # nothing to claim: no write transaction
        claimed = self._run(lambda tx: _deliveries.claim(tx, owner, plan, limit))
        out: list[tuple[K, C, list[Item]]] = []
        malformed: list[tuple[bool, str, Any, str]] = []
        for channel, consumer, rows in claimed:
            if len(rows) > 1:
                # Highest priority first, then oldest: two stable C-keyed sorts.
                rows.sort(key=_by_id)
                rows.sort(key=_by_priority, reverse=True)
            items: list[Item] = []
            append = items.append
            for row in rows:
                message_id, _priority, body, props, headers, exchange, routing_key, redelivered = row
                try:
                    if type(body) is not bytes or type(exchange) is not str or type(routing_key) is not str:
                        body = _dead_letter.read_row(body, props, headers, exchange, routing_key)[0]
                    properties = decode(props)
                    check_properties(properties)
                    header_table = decode(headers) if headers else {}
                except Malformed as exc:
                    # Written from outside kelp: it leaves the queue; the rest of the batch goes on.
                    malformed.append((consumer.no_ack, consumer.queue, row, str(exc)))
                    continue
                append((message_id, body, properties, header_table, exchange, routing_key, bool(redelivered)))
            if items:
                out.append((channel, consumer, items))
        if malformed:
            self._quarantine(owner, malformed)
        return out

    def _quarantine(self, connection_id: int, items: list[tuple[bool, str, Any, str]]) -> None:
        """Take malformed claimed messages out of their queues (see :mod:`kelp._broker.malformed`)."""
        try:
            self._run(lambda tx: _repair.quarantine(tx, connection_id, items))
        except KelpError:
            # They stay claimed by this connection and return to their queue when it closes.
            logger.exception("kelp: could not take malformed messages out of %s", self.path)

    def get(self, owner: int, queue: str, no_ack: bool) -> tuple[Item, int] | None:
        while True:
            found = self._run(lambda tx: _deliveries.get(tx, owner, queue, no_ack))
            if found is None:
                return None
            row, count = found
            message_id, _p, body, props, headers, exchange, routing_key, redelivered = row
            try:
                body, properties, header_table = _dead_letter.read_row(
                    body, props, headers, exchange, routing_key
                )
            except Malformed as exc:
                # Written from outside kelp: it leaves the queue, and the next message is taken.
                self._quarantine(owner, [(no_ack, queue, row, str(exc))])
                continue
            item = (message_id, body, properties, header_table, exchange, routing_key, bool(redelivered))
            return item, count

    # --- settling -----------------------------------------------------------------------------------------

    def ack(self, owner: int, unacked: Sequence[Unacked]) -> None:
        """The DELETE commits with the next transaction of this process (group commit)."""
        self._settle_later(self._acks, [(item.ref, owner) for item in unacked])

    def reject(self, owner: int, unacked: Sequence[Unacked], requeue: bool) -> None:
        pairs = [(item.ref, item.queue) for item in unacked]
        self._run(lambda tx: _deliveries.reject(tx, owner, pairs, requeue))

    # --- waiting ------------------------------------------------------------------------------------------

    def prepare_wait(self, queues: Collection[str], consuming: bool = True) -> float | None:
        """0 when there is work already, else seconds until the next timed event (None: none)."""
        if consuming and self._topology_changed():
            self._run(_ops.nothing)  # reloads it: consumers of a queue deleted elsewhere are cancelled
        self._wakeup.set()  # the flusher starts polling data_version for the waiting connection
        if self._pending.count or self._acks or self._releases:
            return 0.0
        if queues and self._ready(queues):
            return 0.0
        due = self._deadline()
        self._next_due = due
        if due == float("inf"):
            return None
        return max(0.0, due - time.time()) + 0.0005


_by_id = itemgetter(0)
_by_priority = itemgetter(1)


_stores: dict[str, SqliteStore] = {}
_stores_lock = threading.Lock()


def store_for(path: str, options: StoreOptions) -> SqliteStore:
    """The process-wide store of the database file at ``path`` (created on first use)."""
    key = os.path.abspath(path)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store._pid != os.getpid():
            store = _stores[key] = SqliteStore(key, options)
        return store


@atexit.register
def _shutdown_all() -> None:
    for store in list(_stores.values()):
        if store._pid == os.getpid():
            store.shutdown()
