"""Checkpoints of the write-ahead log, run by the flusher thread off the path of every operation.

SQLite's own checkpoints run inside the ``COMMIT`` that grows the WAL past 1,000 pages: copying the pages
back into the database and two fsyncs, in the thread that committed - measured at about a third of the
time of a consumer acking as fast as it can. kelp writers checkpoint inline only as a backstop (past four
times ``WAL_LIMIT_PAGES``); the flusher checkpoints instead, on a connection of its own, at most every
``EVERY`` seconds while the process commits and once after it goes quiet. A ``PASSIVE`` checkpoint waits
for no lock and runs inside one SQLite call, without the GIL, on the other core. (Checkpointing less
often copies fewer pages but lets the WAL file grow, and appends to a growing file cost the writers more;
0.1 s measured best for both publishers and consumers.) While writers never pause, a passive checkpoint
cannot bring the WAL back to its start; once it holds ``WAL_LIMIT_PAGES`` the flusher runs a ``RESTART``
checkpoint, which makes writers wait briefly so that the next one starts the WAL over.
"""

from __future__ import annotations

import logging
import sqlite3

from kelp._broker.sqlite._schema import connect

__all__ = ["EVERY", "WAL_LIMIT_PAGES", "Checkpointer"]

logger = logging.getLogger("kelp.transport.sqlite")

#: Seconds between background checkpoints while this process commits.
EVERY = 0.1
#: A WAL this long (in pages) is restarted by the flusher; writers checkpoint inline past four times this.
WAL_LIMIT_PAGES = 16_000
#: How long a RESTART checkpoint waits for writers and readers (seconds).
RESTART_WAIT = 1.0


class Checkpointer:
    """The flusher's own connection to the database file, opened on first use."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        self._db: sqlite3.Connection | None = None

    def run(self) -> tuple[int, int]:
        """Checkpoint; return (frames in the WAL, frames copied back) after it."""
        db = self._db
        if db is None:
            db = self._db = connect(self.path, self.synchronous, RESTART_WAIT)
        _busy, log, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log >= WAL_LIMIT_PAGES:
            logger.debug("kelp: the WAL of %s holds %d pages; restarting it", self.path, log)
            _busy, log, done = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return int(log), int(done)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
