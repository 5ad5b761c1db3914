"""Watching the database file: the store fails loudly rather than report as stored what is not at its path.

A process keeps its SQLite file open. If the file is deleted, or replaced (moved away, restored from a
backup), the open handle still accepts commits, into a file nobody else will ever read: every message
"sent" after that would be lost. Before each commit the store compares the identity (device, inode) of
the file at its path with the one it opened; on a mismatch nothing more is committed and every operation
raises :class:`~kelp.exceptions.OperationalError` until the connections are closed and opened again.

A full disk (``SQLITE_FULL``, also raised when the file reaches ``PRAGMA max_page_count``) is reported as
:class:`~kelp.exceptions.ResourceError`; nothing of the failed transaction is stored, and the next commit
after space returns goes through.
"""

from __future__ import annotations

import os
import sqlite3

from kelp.exceptions import ResourceError

__all__ = ["FileIdentity", "full_error", "is_full"]


class FileIdentity:
    """The (device, inode) of the database file as this process opened it."""

    __slots__ = ("identity", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def remember(self) -> None:
        """Record the identity of the file just opened."""
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """Why the open file is no longer the one at the path, or None while it is."""
        if self.identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (
                f"the kelp database {self.path} was deleted while this process had it open: nothing more "
                "is committed to it; close the connections and reconnect"
            )
        except OSError:
            return None  # a transient stat failure is no proof: let the commit go on
        if (st.st_dev, st.st_ino) != self.identity:
            return (
                f"the kelp database {self.path} was replaced by another file while this process had it "
                "open: nothing more is committed to the old one; close the connections and reconnect"
            )
        return None


def is_full(exc: sqlite3.Error) -> bool:
    """True when SQLite failed for lack of space (disk full, or the page limit reached)."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)


def full_error(path: str) -> ResourceError:
    return ResourceError(
        f"the kelp database {path} cannot grow: the disk is full (or the file reached its page limit); "
        "nothing of this operation was stored; retry once space is free"
    )
