"""Delayed messages on sqlite://: held in the ``delayed`` table (schema 5) until due, they survive the
publishing process (killed -9 right after publish) like ready messages, reach a consumer in another
process on time, never early; transient ones go with a broker restart, as transient ready ones do; a
schema 4 file is upgraded in place."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

from kelp import Connection, Queue
from kelp._broker.sqlite._schema import SCHEMA_VERSION

from .old_schema import as_schema_6


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, timeout=60)


def _take(conn: Connection, name: str, n: int, timeout: float) -> list[tuple[object, float]]:
    got: list[tuple[object, float]] = []

    def on_message(body: object, message: object) -> None:
        got.append((body, time.time()))
        message.ack()  # type: ignore[attr-defined]

    with conn.Consumer([Queue(name, durable=True)], callbacks=[on_message]):
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.25)
            except TimeoutError:
                pass
    return got


def test_delayed_messages_survive_the_publisher_killed_right_after(db_url: str) -> None:
    due = time.time() + 2.0
    _run(
        f"""
        import datetime, os, signal
        from kelp import Connection, Queue
        conn = Connection({db_url!r})
        Queue("later", durable=True)(conn.default_channel).declare()
        producer = conn.Producer()
        eta = datetime.datetime.fromtimestamp({due!r}, datetime.UTC)
        for n in range(5):  # one due time: publish order decides
            producer.publish(n, routing_key="later", eta=eta)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with Connection(db_url) as conn:
        assert conn.transport.queue_stats()[0].delayed == 5
        got = _take(conn, "later", 5, timeout=10)
    assert [body for body, _ in got] == [0, 1, 2, 3, 4]
    assert all(at >= due for _, at in got)


def test_a_consumer_in_another_process_gets_them_on_time(db_url: str) -> None:
    with Connection(db_url) as conn:
        Queue("cross", durable=True)(conn.default_channel).declare()
        due = time.time() + 1.5
        publisher = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nfrom kelp import Connection\n"
                f"with Connection({db_url!r}) as c:\n"
                f"    c.Producer().publish('x', routing_key='cross', countdown={due!r} - time.time())\n",
            ]
        )
        try:
            got = _take(conn, "cross", 1, timeout=10)
        finally:
            publisher.wait(30)
    assert len(got) == 1
    assert 0 <= got[0][1] - due < 0.5


def test_transient_delayed_messages_go_with_a_restart(db_url: str) -> None:
    _run(
        f"""
        from kelp import Connection, Queue
        with Connection({db_url!r}) as conn:
            Queue("mixed", durable=True)(conn.default_channel).declare()
            p = conn.Producer()
            p.publish("kept", routing_key="mixed", countdown=0.5)
            p.publish("lost", routing_key="mixed", countdown=0.5, delivery_mode="transient")
        """
    )
    with Connection(db_url) as conn:  # the only process: the file is recovered as after a restart
        got = _take(conn, "mixed", 2, timeout=3)
    assert [body for body, _ in got] == ["kept"]


def test_a_schema_4_file_is_upgraded_with_the_delayed_table(db_url: str, tmp_path) -> None:
    path = db_url[len("sqlite:///") :]
    with Connection(db_url) as conn:
        Queue("q", durable=True)(conn.default_channel).declare()
        conn.Producer().publish("ready", routing_key="q")
    db = sqlite3.connect(path, isolation_level=None)
    as_schema_6(db)  # and older still:
    db.execute("DROP TABLE delayed")
    for column in ("published", "delivered", "acked"):  # schema 6 added them
        db.execute(f"ALTER TABLE queue_ready DROP COLUMN {column}")
    db.execute("DROP TRIGGER ready_queue_added")
    db.execute(
        "CREATE TRIGGER ready_queue_added AFTER INSERT ON queues BEGIN "
        "INSERT OR REPLACE INTO queue_ready VALUES (NEW.name, 0, 0); END"
    )
    db.execute("PRAGMA user_version=4")
    db.close()
    with Connection(db_url) as conn:
        conn.Producer().publish("later", routing_key="q", countdown=0.3)
        got = _take(conn, "q", 2, timeout=5)
    assert [body for body, _ in got] == ["ready", "later"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"delayed_due", "delayed_message"} <= indexes
    db.close()


def test_cancel_finds_generated_and_given_ids(db_url: str) -> None:
    with Connection(db_url) as conn:
        Queue("q")(conn.default_channel).declare()
        producer = conn.Producer()
        generated = producer.publish("a", routing_key="q", countdown=60)
        assert generated is not None
        assert generated.startswith("kd-")  # carries its due time: found through the due-time index
        producer.publish("b", routing_key="q", countdown=60, message_id="order-17")
        producer.publish("c", routing_key="q", countdown=60, message_id="order-17")
        assert producer.cancel_delayed("order-17") == 2
        assert producer.cancel_delayed(generated) == 1
        assert conn.transport.queue_stats()[0].delayed == 0
