"""Ready messages are counted by the schema (inserts in arrears, by the ready mark; deletes and releases
by triggers): ``get``, ``queue_declare`` and length limits cost the same on a queue 100 deep and 20,000
deep, and the counts stay exact through every operation (raw SQL included)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kelp import Connection, Queue
from kelp._broker.sqlite import _schema
from kelp._broker.sqlite._tuning import FOLD_EVERY

from .old_schema import as_schema_6

pytestmark = pytest.mark.timeout(120)


def _ready(conn: Connection, name: str = "q") -> int:
    return int(Queue(name)(conn.default_channel).queue_declare(passive=True).message_count)


def _fill(conn: Connection, depth: int, name: str = "q") -> None:
    Queue(name)(conn.default_channel).declare()
    producer = conn.Producer()
    for n in range(depth):
        producer.publish(n, routing_key=name, delivery_mode=1)
    conn.transport.store.flush()


def _steps_of_a_get(conn: Connection, name: str) -> int:
    """SQLite virtual-machine steps (in thousands) one ``get`` runs: a deterministic cost measure."""
    store = conn.transport.store
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store._lock:
        store._writer.set_progress_handler(count, 1000)
    try:
        message = Queue(name)(conn.default_channel).get()
    finally:
        with store._lock:
            store._writer.set_progress_handler(None, 1000)
    assert message is not None
    message.ack()
    return steps


def test_get_costs_the_same_whatever_the_queue_depth(db_url: str) -> None:
    with Connection(db_url) as conn:
        _fill(conn, 100, "shallow")
        _fill(conn, 20_000, "deep")
        shallow = _steps_of_a_get(conn, "shallow")
        deep = _steps_of_a_get(conn, "deep")
        assert deep <= shallow + 2, (shallow, deep)
        message = Queue("deep")(conn.default_channel).get()
        assert message is not None
        assert message.delivery_info["message_count"] == 19_998


def test_counts_stay_exact_through_every_operation(db_url: str) -> None:
    with Connection(db_url) as conn:
        _fill(conn, 10)
        assert _ready(conn) == 10
        bound = Queue("q")(conn.default_channel)
        first, second, third = bound.get(), bound.get(), bound.get()
        assert first is not None
        assert second is not None
        assert third is not None
        assert third.delivery_info["message_count"] == 7
        first.ack()
        second.reject(requeue=True)
        assert _ready(conn) == 8
        third.reject(requeue=False)
        assert _ready(conn) == 8
        got: list[int] = []
        with conn.Consumer(
            [Queue("q")], callbacks=[lambda body, message: got.append(body)], prefetch_count=3
        ):
            conn.drain_events(timeout=5)
            assert _ready(conn) == 5
    with Connection(db_url) as conn:
        assert _ready(conn) == 8  # the consumer's unacked messages went back when its connection closed
        db = sqlite3.connect(db_url[len("sqlite:///") :])
        template = db.execute("SELECT properties, exchange, routing_key FROM messages LIMIT 1").fetchone()
        db.execute(
            "INSERT INTO messages (queue, priority, body, properties, headers, exchange, routing_key, "
            "persistent) VALUES ('q', 0, x'31', ?, '', ?, ?, 1)",
            template,
        )
        db.commit()
        db.close()
        assert _ready(conn) == 9  # a row written from outside is counted too
        assert Queue("q")(conn.default_channel).purge() == 9
        assert _ready(conn) == 0


def test_length_limits_use_the_counts(db_url: str) -> None:
    with Connection(db_url) as conn:
        Queue("q", max_length=3, max_length_bytes=100)(conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(10):
            producer.publish(str(n), routing_key="q", serializer="json")
        assert _ready(conn) == 3
        bound = Queue("q")(conn.default_channel)
        assert [bound.get(no_ack=True).payload for _ in range(3)] == ["7", "8", "9"]  # type: ignore[union-attr]


def test_a_version_2_file_gets_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    url = f"sqlite:///{path}"
    with Connection(url) as conn:
        Queue("q", durable=True, auto_delete=False)(conn.default_channel).declare()
        for n in range(5):
            conn.Producer().publish(n, routing_key="q")
    db = sqlite3.connect(path, isolation_level=None)  # make it the file schema 2 wrote
    as_schema_6(db)  # and older still:
    for trigger in ("ready_queue_added", "ready_queue_deleted", "ready_delete", "ready_release", "mark_kept"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE queue_ready")
    db.execute("DELETE FROM meta WHERE key='ready_mark'")
    db.execute("DROP TABLE delayed")  # schema 5 added it
    db.execute("PRAGMA user_version=2")
    db.close()
    with Connection(url) as conn:
        assert _ready(conn) == 5
        message = Queue("q")(conn.default_channel).get()
        assert message is not None
        assert message.delivery_info["message_count"] == 4


def _uncounted(path: Path | str) -> int:
    """Rows above the ready mark: inserted, not counted yet."""
    db = sqlite3.connect(path)
    try:
        return int(
            db.execute(
                "SELECT count(*) FROM messages WHERE id > (SELECT value FROM meta WHERE key='ready_mark')"
            ).fetchone()[0]
        )
    finally:
        db.close()


def test_persistent_publishes_are_counted_and_never_far_behind(tmp_path: Path) -> None:
    path = tmp_path / "lean.db"
    with Connection(f"sqlite:///{path}") as conn:
        Queue("q")(conn.default_channel).declare()
        producer = conn.Producer()
        total = FOLD_EVERY * 2 + 10
        for n in range(total):
            producer.publish(n, routing_key="q")  # persistent: each one a single INSERT, committed
        assert 0 < _uncounted(path) <= FOLD_EVERY  # a publisher alone still brings the counts up to date
        assert _ready(conn) == total
        assert _uncounted(path) == 0
        bound = Queue("q")(conn.default_channel)
        message = bound.get()
        assert message is not None
        assert message.delivery_info["message_count"] == total - 1
        message.reject(requeue=True)
        producer.publish("one more", routing_key="q")
        db = sqlite3.connect(path)
        db.execute("DELETE FROM messages WHERE id = (SELECT max(id) FROM messages)")  # not counted yet
        db.execute("DELETE FROM messages WHERE id = (SELECT min(id) FROM messages)")  # counted
        db.commit()
        db.close()
        assert _ready(conn) == total - 1


def test_a_version_3_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    url = f"sqlite:///{path}"
    with Connection(url) as conn:
        Queue("q", durable=True, auto_delete=False)(conn.default_channel).declare()
        for n in range(5):
            conn.Producer().publish(n, routing_key="q")
        message = Queue("q")(conn.default_channel).get()
        assert message is not None
        message.ack()
    db = sqlite3.connect(path, isolation_level=None)  # make it the file schema 3 wrote:
    as_schema_6(db)  # and older still:
    for trigger in ("ready_queue_added", "ready_queue_deleted", "ready_delete", "ready_release"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE queue_ready")
    db.execute("DELETE FROM meta WHERE key='ready_mark'")
    # ids by AUTOINCREMENT,
    db.execute(_schema._MESSAGES_TABLE.format(name="messages_3").replace("KEY,", "KEY AUTOINCREMENT,", 1))
    db.execute("INSERT INTO messages_3 SELECT * FROM messages")
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_3 RENAME TO messages")
    for statement in _schema._MESSAGES_INDEXES:
        db.execute(statement)
    for statement in _schema._MIGRATIONS[3]:  # inserts counted by a trigger
        db.execute(statement)
    db.execute("DROP TABLE delayed")  # schema 5 added it
    db.execute("PRAGMA user_version=3")
    template = db.execute("SELECT properties, exchange, routing_key FROM messages LIMIT 1").fetchone()
    db.execute(  # counted by schema 3's insert trigger
        "INSERT INTO messages (queue, priority, body, properties, headers, exchange, routing_key, "
        "persistent) VALUES ('q', 0, x'31', ?, '', ?, ?, 1)",
        template,
    )
    assert db.execute("SELECT count FROM queue_ready WHERE queue='q'").fetchone()[0] == 5
    db.execute(  # the last id AUTOINCREMENT gave, its message gone
        "INSERT INTO messages (queue, priority, body, properties, headers, exchange, routing_key, "
        "persistent) VALUES ('gone', 0, x'31', ?, '', ?, ?, 1)",
        template,
    )
    last = db.execute("DELETE FROM messages WHERE queue='gone' RETURNING id").fetchone()[0]
    db.close()
    with Connection(url) as conn:
        assert _ready(conn) == 5
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION == 7
        triggers = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
        assert "ready_insert" not in triggers
        table = db.execute("SELECT sql FROM sqlite_master WHERE name='messages'").fetchone()[0]
        assert "AUTOINCREMENT" not in table
        db.close()
        conn.Producer().publish("six", routing_key="q")
        db = sqlite3.connect(path)
        assert db.execute("SELECT max(id) FROM messages WHERE queue='q'").fetchone()[0] > last
        db.close()
        message = Queue("q")(conn.default_channel).get()
        assert message is not None
        assert message.delivery_info["message_count"] == 5
        message.reject(requeue=True)
        assert _ready(conn) == 6


def test_a_late_ack_of_a_deleted_queues_message_never_reaches_a_new_one(tmp_path: Path) -> None:
    """Message ids are rowids (no AUTOINCREMENT): the id of the last message, deleted with its queue
    while a connection held it, is kept by a tombstone, so the next message gets another."""
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    with Connection(url) as conn, Connection(url) as other:
        for name in ("old", "new"):
            Queue(name)(conn.default_channel).declare()
        conn.Producer().publish("held", routing_key="old")
        held = Queue("old")(conn.default_channel).get()
        assert held is not None
        assert Queue("old")(other.default_channel).delete() == 0
        conn.Producer().publish("fresh", routing_key="new")
        fresh = Queue("new")(conn.default_channel).get()
        assert fresh is not None
        assert fresh.payload == "fresh"
        held.ack()  # the deleted queue's message: gone already; must not settle "fresh"
        fresh.reject(requeue=True)
        assert _ready(conn, "new") == 1
        again = Queue("new")(conn.default_channel).get()
        assert again is not None
        assert again.payload == "fresh"
        again.ack()
    db = sqlite3.connect(tmp_path / "ids.db")
    assert db.execute("SELECT queue, owner FROM messages").fetchall() == [("", 0)]  # "fresh"'s tombstone
    db.close()
    with Connection(url) as conn:  # the first process to open the file releases claimed messages
        assert _ready(conn, "new") == 0
    db = sqlite3.connect(tmp_path / "ids.db")
    assert db.execute("SELECT queue, owner FROM messages").fetchall() == [("", 0)]  # still no message
    db.close()


def test_a_version_5_file_gets_traffic_counters(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    url = f"sqlite:///{path}"
    with Connection(url) as conn:
        Queue("q", durable=True, auto_delete=False)(conn.default_channel).declare()
        for n in range(3):
            conn.Producer().publish(n, routing_key="q")
    db = sqlite3.connect(path, isolation_level=None)  # make it the file schema 5 wrote
    as_schema_6(db)  # and older still:
    for column in ("published", "delivered", "acked"):
        db.execute(f"ALTER TABLE queue_ready DROP COLUMN {column}")
    db.execute("DROP TRIGGER ready_queue_added")
    db.execute(
        "CREATE TRIGGER ready_queue_added AFTER INSERT ON queues BEGIN "
        "INSERT OR REPLACE INTO queue_ready VALUES (NEW.name, 0, 0); END"
    )
    db.execute("PRAGMA user_version=5")
    db.close()
    with Connection(url) as conn:
        assert _ready(conn) == 3
        conn.Producer().publish("four", routing_key="q")  # one INSERT; counted by the next fold
        message = Queue("q")(conn.default_channel).get()
        assert message is not None
        message.ack()
        Queue("new")(conn.default_channel).declare()  # the trigger of schema 6 adds its row
        conn.transport.store.flush()
        stats = {row.queue: row for row in conn.transport.queue_stats()}
        # Counted from the upgrade on: the message published before it is not.
        q = stats["q"]
        assert (q.ready, q.published, q.delivered, q.acked) == (3, 1, 1, 1)
        assert (stats["new"].published, stats["new"].delivered, stats["new"].acked) == (0, 0, 0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == _schema.SCHEMA_VERSION == 7
    db.close()
