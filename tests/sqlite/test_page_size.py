"""Page size: a database file kelp creates gets kelp's page size (each persistent publish's commit writes
the pages it touched into the WAL, so smaller pages make it cheaper); a file created before keeps its own,
and its messages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kelp import Connection
from kelp._broker.sqlite._schema import PAGE_SIZE

pytestmark = pytest.mark.timeout(60)


def _page_size(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        size: int = db.execute("PRAGMA page_size").fetchone()[0]
        return size
    finally:
        db.close()


def _publish(path: Path, body: str) -> None:
    with Connection(f"sqlite:///{path}") as conn:
        conn.default_channel.queue_declare("q", durable=True, auto_delete=False)
        conn.Producer().publish(body, routing_key="q")


def _drain(path: Path, count: int) -> list[str]:
    got: list[str] = []
    with Connection(f"sqlite:///{path}") as conn:
        queue = conn.SimpleQueue("q")
        for _ in range(count):
            message = queue.get(timeout=5)
            got.append(message.payload)
            message.ack()
        assert queue.qsize() == 0
    return got


def test_a_new_database_gets_kelps_page_size(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    _publish(path, "one")
    assert PAGE_SIZE != 4096  # not SQLite's default: this test would pass without kelp setting it
    assert _page_size(path) == PAGE_SIZE
    _publish(path, "two")
    assert _drain(path, 2) == ["one", "two"]


def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=4096")
    db.execute("VACUUM")  # writes the header: the file is no longer empty
    db.close()
    _publish(path, "one")
    assert _page_size(path) == 4096
    assert _drain(path, 1) == ["one"]
