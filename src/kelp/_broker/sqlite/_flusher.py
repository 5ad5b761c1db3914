"""The flusher thread of the sqlite store, and the store's lifecycle that starts and stops it. The flusher
commits buffered publishes and acks on time, polls ``data_version`` while a connection waits (waking it
when another process committed), refreshes this process's heartbeat, reaps dead processes and
checkpoints the WAL (:mod:`._checkpoint`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kelp._broker.core.store import Claimer
from kelp._broker.sqlite import _checkpoint, _tuning
from kelp._broker.sqlite._commit import GroupCommit
from kelp._broker.sqlite._schema import (
    connect,
)
from kelp.exceptions import (
    OperationalError,
    ResourceError,
)

logger = logging.getLogger("kelp.transport.sqlite")

T = TypeVar("T")
C = TypeVar("C", bound=Claimer)
K = TypeVar("K")


class Flusher(GroupCommit):
    """Opening and closing the database, and the background thread."""

    # --- lifecycle ----------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Count one more user (a transport connection); open the database on first use."""
        with self._lock:
            if self._refs == 0:
                self._open()
            self._refs += 1

    def detach(self) -> None:
        """Count one user less; the last one flushes and closes the database (the store stays known)."""
        with self._lock:
            self._refs -= 1
            if self._refs > 0:
                return
        self._close()

    def _open(self) -> None:
        if os.getpid() != self._pid:
            raise OperationalError("a kelp sqlite store cannot be used across fork(); reconnect in the child")
        options = self.options
        writer = connect(self.path, options.synchronous, options.busy_timeout)
        try:
            reader = connect(self.path, options.synchronous, options.busy_timeout)
        except BaseException:
            writer.close()
            raise
        # The writer never waits inside SQLite: _run retries BEGIN IMMEDIATE with its own back-off.
        writer.execute("PRAGMA busy_timeout=0")
        writer.execute("PRAGMA journal_size_limit=67108864")
        # Checkpoints are the flusher's (see _checkpoint.py); a writer runs one only as a backstop.
        writer.execute(f"PRAGMA wal_autocheckpoint={4 * _checkpoint.WAL_LIMIT_PAGES}")
        self._writer, self._reader = writer, reader
        self._inserter = writer.cursor()
        self._lost = None
        self._file.remember()
        try:
            self._run(self._register, plain=True)
        except BaseException:
            self._writer = self._reader = self._inserter = None
            writer.close()
            reader.close()
            raise
        self._stopping = False
        self._flusher = threading.Thread(
            target=self._flusher_loop, name=f"kelp-sqlite-flusher {self.path}", daemon=True
        )
        self._flusher.start()

    def _stop_flusher(self) -> None:
        flusher = self._flusher
        self._stopping = True
        self._wakeup.set()
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=5)

    def _close(self) -> None:
        self._stop_flusher()
        with self._lock:
            if self._refs > 0 or self._writer is None:
                return
            try:
                if self._lost is None:
                    self.flush()
                elif self._pending.count:
                    logger.error(
                        "kelp: %d buffered publishes were not stored: %s", self._pending.count, self._lost
                    )
            except Exception:
                logger.exception("kelp: could not flush %s while closing", self.path)
            self._flusher = None
            self._checkpointer.close()
            writer, reader = self._writer, self._reader
            self._writer = self._reader = self._inserter = None
            for db in (reader, writer):
                if db is not None:
                    try:
                        db.close()
                    except sqlite3.Error:
                        pass

    def shutdown(self) -> None:
        """At interpreter exit: commit what is buffered and unregister this process."""
        # The flusher stops first: a heartbeat after the registration is deleted below would read as this
        # process having been declared dead by another.
        self._stop_flusher()
        with self._lock:
            if self._writer is None:
                return
            try:
                self._run(self._unregister)
            except Exception:
                logger.debug("kelp: could not unregister from %s at exit", self.path, exc_info=True)
            self._refs = 0
        self._close()

    # --- the flusher thread -------------------------------------------------------------------------------

    def _flusher_loop(self) -> None:
        interval = _tuning.POLL_MIN
        last_version: int | None = None
        now = time.monotonic()
        next_heartbeat = now + _tuning.HEARTBEAT_EVERY
        last_reap = now
        while not self._stopping:
            now = time.monotonic()
            timeout = _tuning.HEARTBEAT_EVERY
            due = float("inf")
            first = self._first_pending
            if first is not None and self._shared:
                due = max(
                    first + _tuning.LINGER, self._last_buffer + _tuning.LINGER / 2
                )  # once the publisher paused
            elif first is not None:
                due = first + _tuning.LINGER if self._pending.count < _tuning.BATCH else now
            first = self._first_settle
            if first is not None:
                due = min(due, first + _tuning.ACK_LINGER)
            if now >= due:
                self._guard(self.flush)
            elif due < float("inf"):
                timeout = due - now
            if self._waiting:
                version = self._data_version()
                if version != last_version:
                    last_version = version
                    interval = _tuning.POLL_MIN
                    self._wake_everyone()
                else:
                    interval = min(interval * 1.5, _tuning.POLL_MAX)
                timeout = min(timeout, interval)
            if now >= next_heartbeat:
                self._guard(self._heartbeat)
                next_heartbeat = now + _tuning.HEARTBEAT_EVERY
            next_reap = last_reap + (_tuning.REAP_WHILE_WAITING if self._waiting else _tuning.REAP_IDLE)
            if now >= next_reap:
                self._guard(self._reap)
                last_reap = now
                next_reap = now + (_tuning.REAP_WHILE_WAITING if self._waiting else _tuning.REAP_IDLE)
            timeout = min(timeout, max(0.0, next_reap - now))
            if self._last_commit > self._checkpointed_at:
                due = self._checkpointed_at + _checkpoint.EVERY
                if now >= due:
                    self._checkpointed_at = now
                    self._guard(self._checkpoint)
                else:
                    timeout = min(timeout, due - now)
            self._wakeup.wait(timeout)
            self._wakeup.clear()

    def _guard(self, function: Callable[[], None]) -> None:
        if self._lost is not None:
            return  # nothing can be done on the file any more; the user's next operation says why
        try:
            function()
        except Exception as exc:
            if self._writer is not None and not self._stopping:
                # A full disk is an error to act on (buffered publishes wait for space); the rest is retried.
                level = logging.ERROR if isinstance(exc, ResourceError) else logging.WARNING
                logger.log(level, "kelp: sqlite background task %s failed: %s", function.__name__, exc)

    def _checkpoint(self) -> None:
        self._checkpointer.run()
