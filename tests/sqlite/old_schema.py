"""Turning a file the current kelp wrote into one an older kelp wrote, for the upgrade tests."""

from __future__ import annotations

import sqlite3

from kelp._broker.sqlite import _schema


def as_schema_6(db: sqlite3.Connection) -> None:
    """Undo schema 7 (fresh rows): no ``fresh`` column, the ready index over every unowned row. Rows that
    were fresh become ordinary ready rows above the ready mark, as schema 6 inserted them."""
    db.execute("DROP INDEX messages_ready")
    db.execute("ALTER TABLE messages DROP COLUMN fresh")
    db.execute(_schema._MESSAGES_INDEXES[0])
