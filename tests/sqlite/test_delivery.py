"""The delivery model on sqlite://: what a returned publish() guarantees, and how fast a dead consumer's
messages come back."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest

from kelp import Connection, Exchange, Queue
from kelp.exceptions import MessageNacked

from .conftest import Worker

pytestmark = pytest.mark.timeout(120)

COUNT = 3_000


def _drain_all(conn: Connection, name: str) -> list[int]:
    queue = Queue(name, durable=True, auto_delete=False)(conn.default_channel)
    got = []
    while (message := queue.get(no_ack=True)) is not None:
        got.append(message.payload["n"])
    return got


@pytest.mark.parametrize("face", ["sync", "aio"])
def test_kill_9_right_after_persistent_publishes_loses_nothing(
    db_url: str, workers: list[Worker], face: str
) -> None:
    """Default options, no close, no flush: every persistent publish() that returned was committed."""
    dying = Worker("die", db_url, "work", str(COUNT), "2", *(["aio"] if face == "aio" else []))
    workers.append(dying)
    dying.proc.wait(timeout=60)
    assert dying.proc.returncode == -9
    with Connection(db_url) as conn:  # alone on the file: a broker restart, persistent messages stay
        got = _drain_all(conn, "work")
    if face == "sync":
        assert got == list(range(COUNT))
    else:  # a sequential loop, then as many publishes at once (their order is the tasks')
        assert got[:COUNT] == list(range(COUNT))
        assert sorted(got[COUNT:]) == list(range(COUNT, 2 * COUNT))


def test_kill_9_after_transient_publishes_loses_at_most_the_tail(db_url: str, workers: list[Worker]) -> None:
    """Transient messages are group-committed: a crash loses those of the last commit window (a tail, in
    order, never a hole); a clean close commits every one."""
    with Connection(db_url) as conn:  # keeps the file open: no broker restart drops the transient ones
        conn.Producer().publish({"n": -1}, routing_key="work", declare=[Queue("work", durable=True)])
        assert _drain_all(conn, "work") == [-1]
        dying = Worker("die", db_url, "work", str(COUNT), "1")
        workers.append(dying)
        dying.proc.wait(timeout=60)
        assert dying.proc.returncode == -9
        got = _drain_all(conn, "work")
        assert got == list(range(len(got)))
        closing = Worker("produce", db_url, "work", "0", str(COUNT), "transient")
        workers.append(closing)
        closing.finish()
        assert _drain_all(conn, "work") == list(range(COUNT))


def test_a_killed_consumers_messages_reach_another_process_within_2s(
    db_url: str, workers: list[Worker]
) -> None:
    with Connection(db_url) as conn:  # publish, then close: the consumers run in other processes
        producer = conn.Producer()
        queue = Queue("work", durable=True, auto_delete=False)
        for n in range(10):
            producer.publish({"n": n}, routing_key="work", declare=[queue])
    holder = Worker("hold", db_url, "work", "10")
    workers.append(holder)
    assert len(holder.read_lines(10)) == 10
    taker = Worker("consume", db_url, "work", "5")
    workers.append(taker)
    assert taker.read_lines(1) == ["ready"]
    time.sleep(0.5)  # the taker waits, with nothing to take
    assert len(taker.lines) == 1
    holder.kill()
    killed = time.monotonic()
    lines = taker.read_lines(11, timeout=30)
    elapsed = time.monotonic() - killed
    got = sorted((int(n), flag == "1") for n, flag in (line.split() for line in lines[1:]))
    assert got == [(n, True) for n in range(10)]
    # The promise is 2 s; a waiting consumer's process looks for dead ones every 0.25 s (was 1.5 s here).
    assert elapsed < 1.0, f"the dead consumer's messages took {elapsed:.2f}s to come back"


def test_a_persistent_publish_routed_against_a_stale_topology_meets_the_rules_in_force(
    db_url: str,
) -> None:
    """The lean commit stores a row only if no process changed the topology since this one routed it;
    otherwise the message is stored under the queue's rules as they are at commit."""
    with Connection(db_url) as conn:
        Queue("kept", durable=True, auto_delete=False)(conn.default_channel).declare()
        producer = conn.Producer()
        producer.publish(0, routing_key="kept")
        path = db_url.removeprefix("sqlite:///")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("""UPDATE queues SET arguments='{"x-max-length": 2}' WHERE name='kept'""")
            other.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")
            other.execute("COMMIT")
        finally:
            other.close()
        for n in range(1, 4):
            producer.publish(n, routing_key="kept")
        store = conn.transport.store  # type: ignore[attr-defined]
        assert store._pending.count == 0
        bodies = []
        while (message := conn.default_channel.basic_get("kept", no_ack=True)) is not None:
            bodies.append(message.decode())
        assert bodies == [2, 3]  # drop-head kept the newest two


def _stored(db_url: str, queue: str) -> int:
    """Messages of ``queue`` committed to the file, as another connection sees them."""
    db = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        count: int = db.execute("SELECT count(*) FROM messages WHERE queue=?", (queue,)).fetchone()[0]
        return count
    finally:
        db.close()


def test_a_persistent_publish_is_committed_when_it_returns(db_url: str) -> None:
    with Connection(db_url) as conn:
        producer = conn.Producer()
        one = Queue("one", durable=True, auto_delete=False)
        fan = Exchange("fan", "fanout", durable=True)
        queues = [Queue(name, fan, durable=True, auto_delete=False) for name in ("a", "b")]
        for n in range(1, 4):
            producer.publish({"n": n}, routing_key="one", declare=[one])
            assert _stored(db_url, "one") == n
            producer.publish({"n": n}, exchange=fan, declare=queues)  # two queues, one transaction
            assert (_stored(db_url, "a"), _stored(db_url, "b")) == (n, n)
        producer.publish({"n": 0}, routing_key="one", delivery_mode=1)  # transient: may be buffered
        conn.flush()
        assert _stored(db_url, "one") == 4


def test_transient_publishes_refused_at_their_commit_are_reported(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue redeclared with ``x-overflow: reject-publish`` by another process while transient messages
    routed to it wait in the buffer: the refusal reaches the publisher by its next flush, naming them."""
    from kelp._broker.sqlite import _tuning

    monkeypatch.setattr(_tuning, "LINGER", 60.0)  # keep the publishes in the buffer until flush()
    with Connection(db_url) as conn:
        Queue("bounded", durable=True, auto_delete=False)(conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key="bounded", delivery_mode=1)
        other = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute(
                """UPDATE queues SET arguments='{"x-max-length": 1, "x-overflow": "reject-publish"}' """
                "WHERE name='bounded'"
            )
            other.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")
            other.execute("COMMIT")
        finally:
            other.close()
        with pytest.raises(MessageNacked) as caught:
            conn.flush()
        assert [envelope.body for envelope in caught.value.envelopes] == [b"1", b"2"]
        conn.flush()  # reported once
        assert _stored(db_url, "bounded") == 1


@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_aio_concurrent_publishes_share_commits(
    db_url: str, monkeypatch: pytest.MonkeyPatch, synchronous: str
) -> None:
    """The event loop commits when that is quick; with ``synchronous=full`` (an fsync per commit) a worker
    thread does, and the tasks that publish meanwhile share its next commit."""
    from kelp import aio
    from kelp._broker.sqlite._store import SqliteStore

    commits = [0]
    attempt, insert_row = SqliteStore._attempt, SqliteStore._insert_row

    def counted_attempt(self: SqliteStore, *args: Any) -> Any:
        commits[0] += 1
        return attempt(self, *args)

    def counted_insert_row(self: SqliteStore, *args: Any) -> bool:
        commits[0] += 1
        return insert_row(self, *args)

    async with aio.Connection(f"{db_url}?synchronous={synchronous}") as conn:
        producer = conn.Producer()
        queue = aio.Queue("work", durable=True, auto_delete=False)
        await producer.publish({"n": -1}, routing_key="work", declare=[queue])
        monkeypatch.setattr(SqliteStore, "_attempt", counted_attempt)
        monkeypatch.setattr(SqliteStore, "_insert_row", counted_insert_row)
        for n in range(5):  # one at a time: each committed before its publish returns
            await producer.publish({"n": n}, routing_key="work")
            assert _stored(db_url, "work") == n + 2
        commits[0] = 0
        await asyncio.gather(*(producer.publish({"n": n}, routing_key="work") for n in range(200)))
        assert _stored(db_url, "work") == 206  # every one committed once gather returned...
        assert commits[0] <= 20  # ...by a few commits, each taking many tasks' publishes


def test_threads_publishing_at_once_each_find_their_messages_committed(db_url: str) -> None:
    """Threads of one process share the store: a publish returns once its message is committed, whether
    its own thread committed it or another thread's commit took it along; each thread's order is kept."""
    per_thread, threads = 300, 4
    errors: list[BaseException] = []

    def publish(index: int) -> None:
        try:
            with Connection(db_url) as conn:
                producer = conn.Producer()
                for n in range(per_thread):
                    producer.publish({"n": index * per_thread + n}, routing_key="work")
                    if n % 100 == 99:
                        assert _stored(db_url, "work") >= n + 1
        except BaseException as exc:
            errors.append(exc)

    with Connection(db_url) as conn:
        Queue("work", durable=True, auto_delete=False)(conn.default_channel).declare()
        workers = [threading.Thread(target=publish, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not errors
        got = _drain_all(conn, "work")
    assert sorted(got) == list(range(per_thread * threads))
    for index in range(threads):
        mine = [n for n in got if n // per_thread == index]
        assert mine == sorted(mine)


def test_confirm_publish_commits_transient_messages_too(db_url: str) -> None:
    with Connection(db_url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        queue = Queue("work", durable=True, auto_delete=False)
        for n in range(1, 4):
            producer.publish({"n": n}, routing_key="work", declare=[queue], delivery_mode=1)
            assert _stored(db_url, "work") == 2 * n - 1
            producer.publish({"n": n}, routing_key="work")
            assert _stored(db_url, "work") == 2 * n
