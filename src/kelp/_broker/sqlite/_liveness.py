"""Liveness of the processes sharing a sqlite file: each registers itself, refreshes a heartbeat, and
reaps dead ones (by pid and process start time, or a stale heartbeat in another pid namespace),
releasing their unacked messages, flagged redelivered.
"""

from __future__ import annotations

import logging
import time
from typing import TypeVar

from kelp._broker.core.store import Claimer
from kelp._broker.sqlite import _declare, _ops
from kelp._broker.sqlite._schema import (
    ensure_schema,
    process_start_time,
    process_state,
)
from kelp._broker.sqlite._transactions import Transactions

logger = logging.getLogger("kelp.transport.sqlite")

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class Liveness(Transactions):
    """Registration, heartbeat and reaping of processes and their connections."""

    # --- processes ----------------------------------------------------------------------------------------

    def _register(self, tx: _ops.Tx) -> None:
        ensure_schema(tx.db, self.path, tx.now)
        tx.refresh()
        db = tx.db
        if self._process_id is not None:
            row = db.execute("SELECT 1 FROM processes WHERE id=?", (self._process_id,)).fetchone()
            if row is not None:
                return
            logger.warning("kelp: this process's registration in %s was reaped; re-registering", self.path)
        live = self._reap_dead(tx)
        self._shared = live > 0
        if not live:
            _declare.recover(tx)
        self._process_id = db.execute(
            "INSERT INTO processes (pid, start_time, namespace, heartbeat_at) VALUES (?, ?, ?, ?)",
            (self._pid, process_start_time(self._pid), self._namespace, tx.now),
        ).lastrowid

    def _unregister(self, tx: _ops.Tx) -> None:
        for connection_id in list(self._owners):
            _declare.drop_connection(tx, connection_id)
        if self._process_id is not None:
            tx.db.execute("DELETE FROM processes WHERE id=?", (self._process_id,))
        self._owners.clear()

    def _insert_connection(self, tx: _ops.Tx) -> int:
        row_id = tx.db.execute("INSERT INTO connections (process) VALUES (?)", (self._process_id,)).lastrowid
        assert row_id is not None
        return row_id

    def _heartbeat(self) -> None:
        def op(tx: _ops.Tx) -> int:
            return tx.db.execute(
                "UPDATE processes SET heartbeat_at=? WHERE id=?", (tx.now, self._process_id)
            ).rowcount

        if self._run(op) == 0:
            self._lost = (
                f"this process was declared dead by another process sharing {self.path} "
                "(its heartbeat went stale); its unacked messages were redelivered: reconnect"
            )
            logger.error("kelp: %s", self._lost)

    def _reap(self) -> None:
        reader = self._reader
        if reader is None:
            return
        with self._reader_lock:
            rows = reader.execute(
                "SELECT id, pid, start_time, namespace, heartbeat_at FROM processes WHERE id != ?",
                (self._process_id,),
            ).fetchall()
        self._shared = bool(rows)
        if any(not self._is_alive(row, time.time()) for row in rows):
            self._run(self._reap_dead)

    def _is_alive(self, row: tuple[int, int, str | None, str, float], now: float) -> bool:
        _, pid, start_time, ns, heartbeat_at = row
        if ns == self._namespace:
            return process_state(pid, start_time)
        return heartbeat_at > now - self.options.heartbeat

    def _reap_dead(self, tx: _ops.Tx) -> int:
        """Drop every dead process's connections (releasing their messages); return how many live."""
        live = 0
        rows = tx.db.execute(
            "SELECT id, pid, start_time, namespace, heartbeat_at FROM processes WHERE id IS NOT ?",
            (self._process_id,),
        ).fetchall()
        for row in rows:
            if self._is_alive(row, tx.now):
                live += 1
                continue
            logger.info("kelp: process %s holding %s is gone; releasing its messages", row[1], self.path)
            for (connection_id,) in tx.db.execute(
                "SELECT id FROM connections WHERE process=?", (row[0],)
            ).fetchall():
                _declare.drop_connection(tx, connection_id)
            tx.db.execute("DELETE FROM processes WHERE id=?", (row[0],))
        return live
