"""The store is watched: a database file deleted or replaced under a running process, or a full disk, is
reported by publish and every later operation; nothing is reported as sent that is not in the file at its
path; when space returns, publishing goes on."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from kelp import Connection, Queue
from kelp.exceptions import OperationalError, ResourceError

pytestmark = pytest.mark.timeout(60)


def _publish_until_refused(conn: Connection, error: type[Exception], body: bytes = b"x") -> int:
    """Publish until ``error`` is raised (bounded); return how many publishes returned normally."""
    producer = conn.Producer()
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            producer.publish(body, routing_key="q")
        except error as exc:
            message = str(exc)
            break
        sent += 1
        time.sleep(0.001)
    else:
        pytest.fail(f"publish never raised {error.__name__}")
    assert "kelp database" in message
    return sent


@pytest.mark.parametrize("confirm", [False, True])
def test_a_deleted_database_file_fails_every_later_operation(db_url: str, confirm: bool) -> None:
    path = db_url[len("sqlite:///") :]
    url = db_url + ("?confirm_publish=true" if confirm else "")
    with Connection(url) as conn:
        conn.default_channel.queue_declare("q")
        os.remove(path)
        _publish_until_refused(conn, OperationalError)
        with pytest.raises(OperationalError, match="deleted"):
            Queue("q")(conn.default_channel).get()
    with Connection(db_url) as conn:  # a new connection opens the file now at the path
        conn.default_channel.queue_declare("q")
        conn.Producer().publish("fresh", routing_key="q")
        message = Queue("q")(conn.default_channel).get()
        assert message is not None
        assert message.payload == "fresh"


def test_a_replaced_database_file_is_noticed(db_url: str, tmp_path: Path) -> None:
    path = db_url[len("sqlite:///") :]
    with Connection(db_url) as conn:
        conn.default_channel.queue_declare("q")
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, path)
        _publish_until_refused(conn, OperationalError)
        with pytest.raises(OperationalError, match="replaced"):
            conn.default_channel.queue_declare("q2")


@pytest.mark.parametrize("confirm", [False, True])
def test_a_full_disk_is_reported_and_publishing_recovers(db_url: str, confirm: bool) -> None:
    url = db_url + ("?confirm_publish=true" if confirm else "")
    body = os.urandom(16_384)
    with Connection(url) as conn:
        conn.default_channel.queue_declare("q")
        store = conn.transport.store
        with store._lock:  # simulate a full disk: the file may not grow beyond a few more pages
            pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
            store._writer.execute(f"PRAGMA max_page_count={pages + 40}")
        sent = _publish_until_refused(conn, ResourceError, body)
        with store._lock:  # space returns
            store._writer.execute("PRAGMA max_page_count=1073741823")
        conn.Producer().publish(body, routing_key="q")
        sent += 1
        store.flush()
        # Every publish that returned is stored; the refused one is not.
        assert Queue("q")(conn.default_channel).queue_declare(passive=True).message_count == sent
