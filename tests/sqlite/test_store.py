"""The sqlite store in one process: concurrency, the asyncio face, busy handling, the default file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from kelp import Connection, Queue, aio
from kelp.exceptions import OperationalError

pytestmark = pytest.mark.timeout(120)


def test_concurrent_consumers_on_threads_never_share_a_message(db_url: str) -> None:
    total = 2000
    with Connection(db_url) as conn:
        queue = Queue("work", durable=True, auto_delete=False)
        producer = conn.Producer()
        for n in range(total):
            producer.publish(n, routing_key="work", declare=[queue])
    seen: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        with Connection(db_url) as conn:
            got: list[int] = []

            def on_message(body: int, message: object) -> None:
                got.append(body)
                message.ack()  # type: ignore[attr-defined]

            with conn.Consumer([queue], callbacks=[on_message], prefetch_count=7):
                idle = 0
                while idle < 3:
                    try:
                        conn.drain_events(timeout=0.2)
                        idle = 0
                    except TimeoutError:
                        idle += 1
            with lock:
                seen.extend(got)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    counts = Counter(seen)
    assert set(counts) == set(range(total))
    assert max(counts.values()) == 1


def test_prefetch_window_holds_across_drains(db_url: str) -> None:
    with Connection(db_url) as conn:
        queue = Queue("work", durable=True, auto_delete=False)
        producer = conn.Producer()
        for n in range(30):
            producer.publish(n, routing_key="work", declare=[queue])
        got: list[object] = []
        with conn.Consumer([queue], callbacks=[lambda body, message: got.append(message)], prefetch_count=5):
            for _ in range(5):
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
            assert len(got) == 5
            for message in got:
                message.ack()  # type: ignore[attr-defined]
            conn.drain_events(timeout=2)
            assert len(got) == 10


async def test_asyncio_face_keeps_the_loop_running(db_url: str) -> None:
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    async with aio.Connection(db_url) as conn:
        queue = aio.Queue("work", durable=True, auto_delete=False)
        producer = conn.Producer()
        for n in range(300):
            await producer.publish(n, routing_key="work", declare=[queue])
        got: list[int] = []

        async def on_message(body: int, message: aio.Message) -> None:
            got.append(body)
            await message.ack()

        async with conn.Consumer([queue], callbacks=[on_message], prefetch_count=50):
            while len(got) < 300:
                await conn.drain_events(timeout=5)
            before = len(ticks)
            with pytest.raises(TimeoutError):
                await conn.drain_events(timeout=0.5)  # nothing comes: the loop must keep ticking
            during = len(ticks) - before
    stop.set()
    await task
    assert sorted(got) == list(range(300))
    assert during >= 20, f"the event loop ticked only {during} times during a 0.5 s drain"


def test_busy_database_raises_operational_error_in_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}?busy_timeout=0.3"
    with Connection(url) as conn:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(OperationalError, match="stayed locked"):
                conn.default_channel.queue_declare("q", durable=True, auto_delete=False)
            assert time.monotonic() - started < 5
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        conn.default_channel.queue_declare("q", durable=True, auto_delete=False)


def test_default_database_path_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kelp.connection import default_sqlite_path

    monkeypatch.setenv("KELP_HOME", str(tmp_path / "home"))
    assert default_sqlite_path() == str(tmp_path / "home" / "kelp.db")
    monkeypatch.delenv("KELP_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_sqlite_path() == str(tmp_path / "xdg" / "kelp" / "kelp.db")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_sqlite_path() == str(tmp_path / "user" / ".local" / "share" / "kelp" / "kelp.db")
    with Connection(f"sqlite:///{default_sqlite_path()}") as conn:  # creates the directory
        conn.default_channel.queue_declare("q")
    assert (tmp_path / "user" / ".local" / "share" / "kelp" / "kelp.db").exists()


def test_header_values_round_trip(db_url: str) -> None:
    import datetime

    headers = {
        "s": "text",
        "i": 7,
        "f": 1.5,
        "t": True,
        "none": None,
        "list": [1, "two", [3.0]],
        "table": {"k": False, "nested": {"x": 1}},
        "raw": b"\x00\xffbytes",
        "when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
    }
    with Connection(db_url) as conn:
        queue = Queue("h", durable=True, auto_delete=False)
        conn.Producer().publish("x", routing_key="h", declare=[queue], headers=headers)
        message = queue(conn.default_channel).get()
        assert message is not None
        assert message.headers == headers
        assert type(message.headers["i"]) is int
        assert type(message.headers["t"]) is bool
        assert type(message.headers["f"]) is float


def test_buffered_publishes_keep_their_order_across_insert_statement_sizes(db_url: str) -> None:
    # Batches of assorted sizes are stored by multi-row inserts of power-of-two sizes; the ids (the
    # delivery order) must follow the publish order across every statement boundary.
    sizes = [1, 3, 1024, 1500, 7, 513, 2]
    with Connection(db_url) as conn:
        queue = Queue("ordered", durable=True, auto_delete=False)
        producer = conn.Producer()
        producer.declare()
        queue(conn.default_channel).declare()
        n = 0
        for size in sizes:
            envelopes = [producer.prepare(n + i, routing_key="ordered") for i in range(size)]
            producer.publish_many(envelopes)
            n += size
        got: list[int] = []
        with conn.SimpleQueue(queue) as simple:
            while len(got) < n:
                message = simple.get(timeout=5)
                got.append(message.payload)
                message.ack()
    assert got == list(range(n))


def test_buffered_rows_meet_the_queue_rules_in_force_at_commit(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process redeclares a queue with a bound, and deletes another, while this one still holds
    buffered (transient) publishes routed to them: the bound applies and the deleted queue gets nothing."""
    from kelp._broker.sqlite import _tuning

    monkeypatch.setattr(_tuning, "LINGER", 60.0)  # keep the publishes in the buffer until flush()
    with Connection(db_url) as conn:
        kept = Queue("kept", durable=True, auto_delete=False)
        gone = Queue("gone", durable=True, auto_delete=False)
        for queue in (kept, gone):
            queue(conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(5):
            producer.publish(n, routing_key="kept", delivery_mode=1)
            producer.publish(n, routing_key="gone", delivery_mode=1)
        store = conn.transport.store  # type: ignore[attr-defined]
        assert store._pending.count == 10
        path = db_url.removeprefix("sqlite:///")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("""UPDATE queues SET arguments='{"x-max-length": 2}' WHERE name='kept'""")
            other.execute("DELETE FROM queues WHERE name='gone'")
            other.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")
            other.execute("COMMIT")
        finally:
            other.close()
        store.flush()
        assert store._pending.count == 0
        stats = {name: ready for name, ready, _unacked, _consumers in store.queue_stats()}
        assert stats == {"kept": 2}
        bodies = []
        while (message := conn.default_channel.basic_get("kept", no_ack=True)) is not None:
            bodies.append(message.decode())
        assert bodies == [3, 4]  # drop-head kept the newest two
        rows = sqlite3.connect(path).execute("SELECT count(*) FROM messages WHERE queue='gone'").fetchone()
        assert rows == (0,)


def test_the_flusher_checkpoints_the_wal_off_the_commit_path(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kelp._broker.sqlite import _checkpoint

    runs: list[tuple[int, int]] = []
    real_run = _checkpoint.Checkpointer.run

    def run(self: _checkpoint.Checkpointer) -> tuple[int, int]:
        result = real_run(self)
        runs.append(result)
        return result

    monkeypatch.setattr(_checkpoint.Checkpointer, "run", run)
    with Connection(db_url) as conn:
        store = conn.transport.store  # type: ignore[attr-defined]
        autocheckpoint = store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == 4 * _checkpoint.WAL_LIMIT_PAGES  # the writer's own is only a backstop
        producer = conn.Producer()
        queue = Queue("wal", durable=True, auto_delete=False)
        for n in range(3000):
            producer.publish({"n": n, "pad": "x" * 200}, routing_key="wal", declare=[queue])
        store.flush()
        deadline = time.monotonic() + 5
        while not any(log and log == done for log, done in runs) and time.monotonic() < deadline:
            time.sleep(0.02)
        # A quiet process ends with every WAL frame copied back into the database file.
        assert any(log and log == done for log, done in runs), runs


def test_a_long_wal_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past WAL_LIMIT_PAGES the checkpointer waits for writers (RESTART) so that the WAL starts over."""
    from kelp._broker.sqlite import _checkpoint

    url = f"sqlite:///{tmp_path}/broker.db"
    with Connection(url) as conn:
        conn.default_channel.queue_declare("q", durable=True, auto_delete=False)
    path = str(tmp_path / "broker.db")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    for n in range(40):
        writer.execute("UPDATE queues SET last_used=? WHERE name='q'", (float(n),))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM queues").fetchone()  # holds a snapshot: blocks a full checkpoint
    for n in range(40):
        writer.execute("UPDATE queues SET last_used=? WHERE name='q'", (float(n),))
    monkeypatch.setattr(_checkpoint, "WAL_LIMIT_PAGES", 10)
    monkeypatch.setattr(_checkpoint, "RESTART_WAIT", 0.2)
    checkpointer = _checkpoint.Checkpointer(path, "normal")
    try:
        started = time.monotonic()
        log, done = checkpointer.run()  # RESTART: waits (bounded) for the reader, then gives up
        assert time.monotonic() - started < 5
        assert done < log
        reader.execute("COMMIT")
        log, done = checkpointer.run()
        assert log == done
        writer.execute("UPDATE queues SET last_used=0 WHERE name='q'")
        log, _ = checkpointer.run()
        assert log < 10  # the WAL started over
    finally:
        checkpointer.close()
        reader.close()
        writer.close()


def test_fanned_out_buffered_publishes_keep_each_queue_s_order(db_url: str) -> None:
    """Rows of a fanout alternate between queues; each queue must still get its messages in publish order,
    also when a message that needs the queue rules (a TTL) comes in between."""
    from kelp import Exchange

    exchange = Exchange("fan", "fanout", durable=True, auto_delete=False)
    queues = [Queue(f"fan{i}", exchange, durable=True, auto_delete=False) for i in range(3)]
    with Connection(db_url) as conn:
        for queue in queues:
            queue(conn.default_channel).declare()
        producer = conn.Producer(exchange=exchange)
        for n in range(1500):
            if n % 500 == 250:
                producer.publish(n, expiration=60)  # an item, stored under the queue rules at commit
            else:
                producer.publish(n)
        for queue in queues:
            got: list[int] = []
            while (message := conn.default_channel.basic_get(queue.name, no_ack=True)) is not None:
                got.append(message.decode())
            assert got == list(range(1500)), queue.name
