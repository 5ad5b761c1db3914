"""The owners of a ``postgresql://`` store: each kelp connection's own database session, which its claims
are tied to, and what keeps that session alive - or lets the server end it when the process hangs.

Liveness (PostgreSQL 14+): an owner session with a liveness of N seconds is ended by the server once it
has been idle N seconds (``idle_session_timeout``); the process's listening thread runs a trivial query
on each owner session idle a quarter of that. A process that hangs (stopped, deadlocked) stops both: the
server ends its sessions and other processes put their claimed copies back (see ``_listen``). A consumer
busy with a message keeps it: the listening thread keeps its session alive meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import psycopg
from psycopg import Connection, Cursor

from kelp._broker.postgres._counters import Counting
from kelp.exceptions import OperationalError

__all__ = ["Owners"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Owners(Counting):
    def __init__(self, conninfo: str, schema: str, flush_publishes: bool) -> None:
        super().__init__(conninfo, schema, flush_publishes)
        self._owners: dict[int, tuple[Connection[Any], threading.Lock]] = {}
        self._lost: set[int] = set()  # owners whose database session ended under them (see reap)
        self._idle: dict[int, list[float]] = {}  # owner -> [liveness seconds, last used (monotonic)]
        self._told_no_liveness = False

    def _owner(self, owner: int, work: Callable[[Cursor[Any]], T]) -> T:
        """Run ``work`` on the owner's own session (its claims are tied to it)."""
        try:
            conn, lock = self._owners[owner]
        except KeyError:
            raise OperationalError("the postgresql:// connection is closed") from None
        with lock, self.mapped(), self.watchdog.watch(conn), conn.cursor() as cur:
            found = work(cur)
        idle = self._idle.get(owner)
        if idle is not None:
            idle[1] = time.monotonic()
        return found

    def owner_alive(self, owner: int) -> bool:
        """False once the owner's database session is known to be lost (its claims are let go)."""
        found = self._owners.get(owner)
        return found is not None and owner not in self._lost and not (found[0].closed or found[0].broken)

    def own_owners(self) -> list[int]:
        with self._guard:
            return list(self._owners)

    def owners_lost(self, owners: Collection[int]) -> None:
        """The database sessions of these owners of this process ended (a network cut, an administrator's
        ``pg_terminate_backend``, a hang past liveness): their claims went back; their waiting drains wake
        and raise."""
        with self._guard:
            self._lost.update(owner for owner in owners if owner in self._owners)
        if self.listener is not None:
            self.listener.wake_all()

    def forget_owner(self, owner: int) -> Connection[Any] | None:
        """Stop tracking the owner (it disconnects); its session, to close."""
        with self._guard:
            conn, _ = self._owners.pop(owner, (None, None))
            self._lost.discard(owner)
            self._idle.pop(owner, None)
        return conn

    def keep_alive(self, owner: int, seconds: float) -> None:
        """Have the server end the owner's session once idle ``seconds``, and keep it busier than that
        while this process runs. Without ``idle_session_timeout`` (PostgreSQL before 14) it does nothing
        but log: a hung process then keeps its claims until it ends."""

        def work(cur: Cursor[Any]) -> bool:
            try:
                cur.execute(
                    "SELECT set_config('idle_session_timeout', %s, false)", (f"{round(seconds * 1000)}",)
                )
            except psycopg.errors.UndefinedObject:
                return False
            return True

        if self._owner(owner, work):
            with self._guard:
                self._idle[owner] = [seconds, time.monotonic()]
        elif not self._told_no_liveness:
            self._told_no_liveness = True
            logger.warning("postgresql %s has no idle_session_timeout (before 14): no liveness", self.where)

    def keep_owners_alive(self) -> None:
        """A trivial query on each owner session idle a quarter of its liveness (the listening thread's)."""
        now = time.monotonic()
        with self._guard:
            due = [(owner, self._owners[owner]) for owner, (seconds, used) in self._idle.items()
                   if now - used >= seconds / 4 and owner in self._owners]  # fmt: skip
        for owner, (conn, lock) in due:
            if not lock.acquire(blocking=False):
                continue  # in use: not idle
            try:
                if not (conn.closed or conn.broken):
                    with self.watchdog.watch(conn):
                        conn.execute("SELECT 1")
                idle = self._idle.get(owner)
                if idle is not None:
                    idle[1] = time.monotonic()
            except psycopg.Error:
                pass  # the session is gone: reap (and the owner's next call) tell
            finally:
                lock.release()
