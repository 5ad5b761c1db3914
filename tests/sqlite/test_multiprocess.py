"""Several processes on one database: exactly-once delivery, dead consumers, restarts, kill -9."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kelp import Connection, Queue
from kelp._broker.sqlite import _tuning
from kelp._broker.sqlite._schema import SCHEMA_VERSION

from .conftest import Worker
from .old_schema import as_schema_6

pytestmark = pytest.mark.timeout(120)


def _received(lines: list[str]) -> list[tuple[int, bool]]:
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1] == "1"))
    return out


def test_two_producers_two_consumers_deliver_each_message_once(db_url: str, workers: list[Worker]) -> None:
    per_producer = 400
    consumers = [Worker("consume", db_url, "work", "3") for _ in range(2)]
    workers.extend(consumers)
    producers = [
        Worker("produce", db_url, "work", str(i * per_producer), str(per_producer)) for i in range(2)
    ]
    workers.extend(producers)
    for producer in producers:
        assert "done" in producer.finish()
    received = [item for consumer in consumers for item in _received(consumer.finish())]
    counts = Counter(n for n, _ in received)
    assert set(counts) == set(range(2 * per_producer))
    # Nobody died: no message was delivered twice, none flagged redelivered.
    assert all(count == 1 for count in counts.values())
    assert not any(redelivered for _, redelivered in received)


def test_kill_9_of_a_consumer_redelivers_what_it_held(db_url: str, workers: list[Worker]) -> None:
    with Connection(db_url) as conn:
        producer = conn.Producer()
        queue = Queue("work", durable=True, auto_delete=False)
        for n in range(50):
            producer.publish({"n": n}, routing_key="work", declare=[queue])
    holder = Worker("hold", db_url, "work", "20")
    workers.append(holder)
    held = _received(holder.read_lines(20))
    assert len(held) == 20
    holder.kill()
    taker = Worker("consume", db_url, "work", "3")
    workers.append(taker)
    got = _received(taker.finish())
    assert sorted(n for n, _ in got) == list(range(50))
    held_ids = {n for n, _ in held}
    assert {n for n, redelivered in got if redelivered} == held_ids


def test_consumer_in_this_process_gets_messages_of_a_killed_one(db_url: str, workers: list[Worker]) -> None:
    with Connection(db_url) as conn:
        queue = Queue("work", durable=True, auto_delete=False)
        producer = conn.Producer()
        for n in range(10):
            producer.publish({"n": n}, routing_key="work", declare=[queue])
        holder = Worker("hold", db_url, "work", "100")
        workers.append(holder)
        assert len(_received(holder.read_lines(10))) == 10
        got: list[tuple[int, bool]] = []

        def on_message(body: dict[str, int], message: object) -> None:
            got.append((body["n"], message.redelivered))  # type: ignore[attr-defined]
            message.ack()  # type: ignore[attr-defined]

        with conn.Consumer([queue], callbacks=[on_message]):
            holder.kill()
            for _ in range(200):
                if len(got) == 10:
                    break
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
        assert sorted(got) == [(n, True) for n in range(10)]


def test_restart_keeps_persistent_messages_on_durable_queues_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    script = f"""
from kelp import Connection, Queue
with Connection({url!r}) as conn:
    durable = Queue("durable", durable=True, auto_delete=False)
    transient = Queue("transient", durable=False, auto_delete=False)
    producer = conn.Producer()
    producer.publish("persistent", routing_key="durable", declare=[durable], delivery_mode=2)
    producer.publish("transient", routing_key="durable", declare=[durable], delivery_mode=1)
    producer.publish("gone", routing_key="transient", declare=[transient])
    channel = conn.channel()
    held = Queue("durable", durable=True, auto_delete=False)(channel)
"""
    _run_script(script)
    with Connection(url) as conn:
        queue = Queue("durable", durable=True, auto_delete=False)(conn.default_channel)
        message = queue.get()
        assert message is not None
        assert message.payload == "persistent"
        message.ack()
        assert queue.get() is None
        from kelp.exceptions import NotFound

        with pytest.raises(NotFound):
            Queue("transient")(conn.channel()).queue_declare(passive=True)


def test_kill_9_of_every_process_keeps_confirmed_messages(tmp_path: Path, workers: list[Worker]) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    producer = Worker("produce", url, "work", "0", "300", "confirm")
    workers.append(producer)
    producer.read_lines(1)
    holder = Worker("hold", url, "work", "25")
    workers.append(holder)
    held = {n for n, _ in _received(holder.read_lines(25))}
    producer.kill()
    holder.kill()
    with Connection(url) as conn:
        queue = Queue("work", durable=True, auto_delete=False)(conn.default_channel)
        seen: dict[int, bool] = {}
        while (message := queue.get()) is not None:
            seen[message.payload["n"]] = message.redelivered
            message.ack()
    assert sorted(seen) == list(range(300))
    assert {n for n, redelivered in seen.items() if redelivered} == held


def test_unacked_messages_of_a_killed_process_are_released_on_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    script = f"""
import os, signal
from kelp import Connection, Queue
conn = Connection({url!r}).connect()
queue = Queue("work", durable=True, auto_delete=False)
producer = conn.Producer()
producer.publish("a", routing_key="work", declare=[queue])
producer.publish("b", routing_key="work", declare=[queue])
message = queue(conn.default_channel).get()
assert message is not None
conn.transport.store.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
    _run_script(script, expect_killed=True)
    with Connection(url) as conn:
        queue = Queue("work", durable=True, auto_delete=False)(conn.default_channel)
        first, second = queue.get(), queue.get()
        assert first is not None
        assert second is not None
        assert (first.payload, first.redelivered) == ("a", True)
        assert (second.payload, second.redelivered) == ("b", False)


def _run_script(source: str, expect_killed: bool = False) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60)
    if expect_killed:
        assert result.returncode == -9, result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_foreign_newer_and_corrupt_files_fail_clearly(tmp_path: Path) -> None:
    from kelp.exceptions import InconsistencyError, UsageError, VersionMismatch

    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(UsageError, match="another application"):
        Connection(f"sqlite:///{foreign}").connect()
    # The foreign file was not touched (still in its rollback-journal mode, no kelp tables).
    db = sqlite3.connect(foreign)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["accounts"]
    db.close()

    newer = tmp_path / "newer.db"
    with Connection(f"sqlite:///{newer}"):
        pass
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(VersionMismatch, match="version 99"):
        Connection(f"sqlite:///{newer}?busy_timeout=10").connect()

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(InconsistencyError, match="not a usable kelp database"):
        Connection(f"sqlite:///{corrupt}").connect()


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    """Schema 1 indexed every message by (queue, owner, ...); schema 2 indexes ready messages only."""
    path = tmp_path / "v1.db"
    url = f"sqlite:///{path}"
    queue = Queue("kept", durable=True, auto_delete=False)
    with Connection(url) as conn:
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key="kept", declare=[queue])
    db = sqlite3.connect(path, isolation_level=None)  # make it the file schema 1 wrote
    as_schema_6(db)  # and older still:
    db.execute("DROP INDEX messages_ready")
    db.execute("CREATE INDEX messages_claim ON messages (queue, owner, priority DESC, id)")
    for trigger in ("ready_queue_added", "ready_queue_deleted", "ready_delete", "ready_release", "mark_kept"):
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute("DROP TABLE queue_ready")
    db.execute("DELETE FROM meta WHERE key='ready_mark'")
    db.execute("DROP TABLE delayed")  # schema 5 added it
    db.execute("PRAGMA user_version=1")
    db.close()
    with Connection(url) as conn, conn.SimpleQueue(queue) as simple:
        got = [simple.get(timeout=5) for _ in range(3)]
        assert [message.payload for message in got] == [0, 1, 2]
        for message in got:
            message.ack()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "messages_ready" in indexes
    assert "messages_claim" not in indexes
    db.close()


def test_a_publisher_commits_its_own_batches_while_another_process_shares_the_file(
    db_url: str, workers: list[Worker]
) -> None:
    """Buffered (transient) publishes: alone, the flusher thread commits full batches (overlapping the
    publisher); with another process on the file the publishing thread does, so that no commit holds the
    write lock while waiting for the GIL."""
    queue = Queue("shared", durable=True, auto_delete=False)
    with Connection(db_url) as conn:
        store = conn.transport.store  # type: ignore[attr-defined]
        producer = conn.Producer()
        producer.publish({"n": -1}, routing_key="shared", declare=[queue])
        assert not store._shared
        assert not store.should_flush()
        worker = Worker("hold", db_url, "shared", "1")
        workers.append(worker)
        worker.read_lines(1)
        deadline = time.monotonic() + 10
        while not store._shared and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._shared
        pending = store._pending
        with store._buffer_lock:  # the flusher cannot take the buffer meanwhile
            saved, pending.count = pending.count, _tuning.BATCH
            try:
                assert store.should_flush()  # a full batch: the publishing thread commits it
                store._shared = False
                assert not store.should_flush()  # alone: the flusher does
            finally:
                pending.count, store._shared = saved, True
        worker.kill()
        deadline = time.monotonic() + 10
        while store._shared and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not store._shared  # the dead peer was noticed


OPENER = """
import sys, time, kelp
path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
with kelp.Connection("sqlite:///" + path) as conn:
    conn.connect()
"""


def test_processes_opening_a_new_file_at_once_all_see_kelp_s_file(tmp_path: Path) -> None:
    """Six processes open one new file at the same moment, ten times over: none may take the file another
    is creating for a foreign database (its marks and tables were once read in separate transactions,
    so a reader could see them half-written: about one round in twenty failed)."""
    for round_ in range(10):
        path = tmp_path / f"new-{round_}.db"
        start = time.time() + 0.5
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(6)
        ]
        outputs = [opener.communicate(timeout=60)[1] for opener in openers]
        errors = [err for opener, err in zip(openers, outputs, strict=True) if opener.returncode]
        assert errors == [], errors[0][-300:]


def test_a_message_published_without_delivery_mode_is_persistent(tmp_path: Path) -> None:
    """A message prepared by hand (``channel.prepare_message``) carries no ``delivery_mode``: kelp's
    default, persistent, applies, as on postgresql:// and redis:// - it survives a restart."""
    url = f"sqlite:///{tmp_path}/broker.db"
    script = f"""
from kelp import Connection, Queue
with Connection({url!r}) as conn:
    channel = conn.channel()
    Queue("durable", durable=True, auto_delete=False)(channel).declare()
    message = channel.prepare_message(b"by hand")
    assert "delivery_mode" not in message.properties
    channel.basic_publish(message, routing_key="durable")
"""
    _run_script(script)
    with Connection(url) as conn:
        queue = Queue("durable", durable=True, auto_delete=False)(conn.default_channel)
        message = queue.get()
        assert message is not None
        assert message.body == b"by hand"
