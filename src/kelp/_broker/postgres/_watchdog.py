"""Bounding the waits on a server that stopped answering (``postgresql://``).

A session whose server hangs (the machine froze, a network path went black, the server process was
stopped) leaves a libpq call waiting for ever: a claim inside ``drain_events(timeout=2)``, an ack, a
publish waiting for its results. TCP cannot tell: a frozen process's kernel still acknowledges. Nor can
the wait itself: a statement waiting on another session's lock looks the same from the client.

So every call that waits on the server is *watched* while it runs. Once one has waited
:data:`SUSPECT_AFTER` seconds, a thread asks the server whether it still answers, by opening a new
session within :data:`PROBE_TIMEOUT` seconds. A server that answers (even with an error, such as too many
connections) is alive and the call is left to wait (a lock wait, a slow statement). One that does not
answer is hung: the sockets of the waiting sessions are shut down, so their calls fail now with
OperationalError. Their connections then report themselves disconnected and the library reconnects; the
unacked messages of a session that ended go back to their queues as they do for any lost session.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

__all__ = ["PROBE_TIMEOUT", "SUSPECT_AFTER", "Watchdog"]

logger = logging.getLogger(__name__)

#: Seconds a call may wait on the server before the server is asked whether it still answers.
SUSPECT_AFTER = 5.0
#: Seconds the server has to open a new session when asked (libpq's ``connect_timeout``: whole seconds).
PROBE_TIMEOUT = 5


class Watchdog:
    """The calls of one store that wait on its server now, and the thread that cuts them if it hangs."""

    def __init__(self, conninfo: str, where: str) -> None:
        self._conninfo = conninfo
        self._where = where
        self._waiting: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._keys = itertools.count()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Watch ``conn`` while the block runs (it waits on the server)."""
        key = next(self._keys)
        self._waiting[key] = (time.monotonic(), conn)
        try:
            yield
        finally:
            del self._waiting[key]

    def start(self) -> None:
        with self._guard:
            if self._thread is not None:
                return
            self._stop.clear()
            name = f"kelp-pg-watch {self._where}"
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._guard:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(PROBE_TIMEOUT + 2)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.check()
            except Exception:  # the watch must go on
                logger.exception("postgresql %s: the watchdog failed", self._where)

    def check(self) -> int:
        """Cut the calls waiting longer than SUSPECT_AFTER if the server does not answer; how many."""
        now = time.monotonic()
        suspects = [key for key, (since, _) in self._waiting.copy().items() if now - since >= SUSPECT_AFTER]
        if not suspects or self._answers():
            return 0
        cut = 0
        for key in suspects:
            found = self._waiting.get(key)  # still waiting: its session is still open
            if found is not None and _shut_down(found[1]):
                cut += 1
        if cut:
            logger.warning(
                "postgresql %s did not answer within %s s: %d waiting session(s) closed",
                self._where,
                PROBE_TIMEOUT,
                cut,
            )
        return cut

    def _answers(self) -> bool:
        try:
            conn = psycopg.connect(
                self._conninfo, connect_timeout=PROBE_TIMEOUT, application_name="kelp probe"
            )
        except psycopg.Error as exc:
            # An error the server sent (too many clients, a refused role) is an answer.
            return exc.sqlstate is not None
        conn.close()
        return True


def _shut_down(conn: psycopg.Connection[Any]) -> bool:
    """Shut down the session's socket: the call waiting on it fails at once."""
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return False  # already closed
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    finally:
        sock.close()
    return True
