"""postgresql:// delayed messages beyond the kit: a consumer waiting with nothing else due is woken on
time by a delayed publish of another process, the held messages survive a server restart, and a
version 1 schema is upgraded in place (the delayed and counters tables)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

import kelp

ROOT = Path(__file__).resolve().parents[2]


def _queue(conn: kelp.Connection, name: str = "work", durable: bool = True) -> kelp.Queue:
    queue = kelp.Queue(name, kelp.Exchange(name, "direct", durable=durable), name, durable=durable)
    queue(conn.channel()).declare()
    return queue


def _delayed_count(conn: kelp.Connection, name: str) -> int:
    for row in conn.transport.queue_stats():
        if row[0] == name:
            return int(row.delayed)
    raise AssertionError(f"no queue {name}")


def test_a_waiting_consumer_wakes_for_another_process_s_delayed_message(pg_url: str) -> None:
    publish = (
        "import sys, time, kelp\n"
        "with kelp.Connection(sys.argv[1]) as conn:\n"
        "    producer = conn.Producer()\n"
        "    time.sleep(1.0)\n"  # the consumer is waiting by then
        "    before = time.time()\n"
        "    producer.publish('later', exchange='work', routing_key='work', countdown=1.0)\n"
        "    print(before + 1.0, time.time() + 1.0, flush=True)\n"
    )
    with kelp.Connection(pg_url) as conn:
        queue = _queue(conn)
        got: list[tuple[str, float]] = []

        def on_message(body: str, message: kelp.Message) -> None:
            got.append((body, time.time()))
            message.ack()

        with conn.Consumer(queue, callbacks=[on_message]):
            publisher = subprocess.Popen(
                [sys.executable, "-c", publish, pg_url], stdout=subprocess.PIPE, text=True
            )
            try:
                # Waiting, with no deadline of any kind, when the message is published.
                conn.drain_events(timeout=10)
            finally:
                out, _ = publisher.communicate(timeout=30)
            earliest, due = map(float, out.split())
    assert [body for body, _ in got] == ["later"]
    assert earliest <= got[0][1] < due + 0.3  # not early; late by a wake-up, not by a poll interval


def test_delayed_messages_survive_a_server_restart(pg_url: str) -> None:
    directory = os.environ.get("KELP_TEST_POSTGRES_DIR")
    if not directory:
        pytest.skip("KELP_TEST_POSTGRES_DIR is not set: no cluster this test may restart")
    with kelp.Connection(pg_url) as conn:
        queue = _queue(conn)
        producer = conn.Producer()
        started = time.time()
        producer.publish("kept", exchange="work", routing_key="work", countdown=3.0, delivery_mode=2)
        producer.publish("dropped", exchange="work", routing_key="work", countdown=3.0, delivery_mode=1)
        assert _delayed_count(conn, "work") == 2
    subprocess.run([str(ROOT / "scripts/postgres.sh"), "restart", directory], check=True, capture_output=True)
    with kelp.Connection(pg_url) as conn:
        bound = queue(conn.channel())
        assert _delayed_count(conn, "work") == 1  # the transient one went with the restart
        if time.time() < started + 2.5:
            assert bound.get() is None  # still held
        deadline = started + 8
        message = None
        while message is None and time.time() < deadline:
            message = bound.get()
            time.sleep(0.05)
        assert message is not None
        assert message.payload == "kept"
        assert time.time() >= started + 3.0
        message.ack()
        assert _delayed_count(conn, "work") == 0


def test_a_version_1_schema_is_upgraded(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        _queue(conn)
        conn.Producer().publish("ready", exchange="work", routing_key="work")
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as db:  # what kelp with schema 1 wrote
        db.execute(f"DROP TABLE {schema}.delayed, {schema}.counters")
        db.execute(f"UPDATE {schema}.meta SET value = 1 WHERE key = 'version'")
    with kelp.Connection(pg_url) as conn:
        conn.Producer().publish("later", exchange="work", routing_key="work", countdown=0.2)
        bound = kelp.Queue("work")(conn.channel())
        first = bound.get()
        assert first is not None
        assert first.payload == "ready"
        first.ack()
        time.sleep(0.3)
        second = bound.get()
        assert second is not None
        assert second.payload == "later"
        second.ack()
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as db:
        row = db.execute(f"SELECT value FROM {schema}.meta WHERE key = 'version'").fetchone()
    assert row == (2,)


def test_processes_moving_due_messages_at_once_keep_due_order(pg_url: str) -> None:
    """3,000 messages come due together; three processes move them at once (1,000 per transaction): the
    queue holds them in due order still."""
    promote = (
        "import sys, time, kelp\n"
        "with kelp.Connection(sys.argv[1]) as conn:\n"
        "    store = conn.transport.session.store\n"
        "    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "    for _ in range(5):\n"
        "        store.expire()\n"
    )
    with kelp.Connection(pg_url) as conn:
        _queue(conn)
        producer = conn.Producer()
        due = time.time() + 1.5
        envelopes = [
            producer.prepare(n, exchange="work", routing_key="work", eta=_aware(due + n * 0.0001))
            for n in range(3000)
        ]
        envelopes.reverse()  # publish order opposite to due order: due order must win
        producer.publish_many(envelopes)
        start = due + 0.5
        workers = [subprocess.Popen([sys.executable, "-c", promote, pg_url, str(start)]) for _ in range(3)]
        for worker in workers:
            assert worker.wait(60) == 0
        bound = kelp.Queue("work")(conn.channel())
        got = []
        while (message := bound.get(no_ack=True)) is not None:
            got.append(message.payload)
    assert got == list(range(3000))


def _aware(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
