"""Fresh rows (schema 7): a persistent publish's INSERT leaves its row out of the ready index, so its commit
writes one B-tree page, not two; the fold that starts every write transaction puts fresh rows into the
index. Whatever reads ready messages - get, consume, purge, delete, counts, a waiting consumer - sees them
all, in publish order."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from kelp import Connection, Exchange, Queue

pytestmark = pytest.mark.timeout(60)


def _path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def _fresh(db_url: str) -> int:
    db = sqlite3.connect(_path(db_url))
    try:
        return int(db.execute("SELECT count(*) FROM messages WHERE fresh IS NOT NULL").fetchone()[0])
    finally:
        db.close()


def _indexed(db_url: str, queue: str) -> int:
    db = sqlite3.connect(_path(db_url))
    try:
        return int(
            db.execute(
                "SELECT count(*) FROM messages INDEXED BY messages_ready "
                "WHERE queue=? AND owner IS NULL AND fresh IS NULL",
                (queue,),
            ).fetchone()[0]
        )
    finally:
        db.close()


def test_a_persistent_publish_stores_a_fresh_row_that_the_next_transaction_indexes(db_url: str) -> None:
    with Connection(db_url) as conn:
        queue = Queue("q", durable=True)(conn.default_channel)
        queue.declare()
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key="q")
        assert _fresh(db_url) == 3  # committed, outside the index
        assert _indexed(db_url, "q") == 0
        assert queue.queue_declare(passive=True).message_count == 3
        message = queue.get()
        assert message is not None
        assert message.payload == 0
        message.ack()
        assert _fresh(db_url) == 0  # the get's transaction folded them in first
        assert _indexed(db_url, "q") == 2


def test_fresh_and_indexed_rows_are_delivered_in_publish_order(db_url: str) -> None:
    with Connection(db_url) as conn:
        queue = Queue("q", durable=True)(conn.default_channel)
        queue.declare()
        producer = conn.Producer()
        producer.publish(0, routing_key="q")  # fresh
        producer.publish(1, routing_key="q", delivery_mode="transient")  # buffered, indexed at commit
        conn.transport.store.flush()
        producer.publish(2, routing_key="q")  # fresh again
        first = queue.get()
        assert first is not None
        assert first.payload == 0
        producer.publish(3, routing_key="q")  # fresh, above the requeued one
        first.requeue()
        got = []
        while (message := queue.get()) is not None:
            got.append(message.payload)
            message.ack()
        assert got == [0, 1, 2, 3]


def test_purge_and_delete_take_fresh_rows_too(db_url: str) -> None:
    with Connection(db_url) as conn:
        channel = conn.default_channel
        queue = Queue("q", durable=True)(channel)
        queue.declare()
        producer = conn.Producer()
        for n in range(4):
            producer.publish(n, routing_key="q")
        assert queue.purge() == 4
        assert queue.queue_declare(passive=True).message_count == 0
        for n in range(2):
            producer.publish(n, routing_key="q")
        assert _fresh(db_url) == 2
        queue.delete()
        queue.declare()
        assert queue.get() is None  # nothing of the deleted queue comes back in the new one
    assert _fresh(db_url) == 0


def test_a_waiting_consumer_on_another_connection_gets_fresh_rows(db_url: str) -> None:
    exchange = Exchange("x", "direct", durable=True)
    queue = Queue("q", exchange, routing_key="k", durable=True)
    got: list[object] = []
    waiting = threading.Event()

    def consume() -> None:
        with (
            Connection(db_url) as conn,
            conn.Consumer(queue, callbacks=[lambda body, message: (got.append(body), message.ack())]),
        ):
            while len(got) < 3:
                waiting.set()
                conn.drain_events(timeout=5)

    with Connection(db_url) as conn:
        queue(conn.default_channel).declare()
        producer = conn.Producer(exchange=exchange, routing_key="k")
        producer.publish("warm-up")  # declares what it needs: no topology change from here on
        thread = threading.Thread(target=consume)
        thread.start()
        for n in range(2):
            assert waiting.wait(10)
            waiting.clear()
            producer.publish(n)
        thread.join(15)
    assert got == ["warm-up", 0, 1]


def test_a_reader_sees_a_fresh_row_as_ready(db_url: str) -> None:
    """The check a waiting consumer makes without a write transaction (is anything ready?) counts fresh
    rows, which the ready index does not hold yet."""
    with Connection(db_url) as conn:
        Queue("q", durable=True)(conn.default_channel).declare()
        store = conn.transport.store
        assert not store._ready({"q"})
        conn.Producer().publish("fresh", routing_key="q")
        assert _fresh(db_url) == 1
        assert store._ready({"q"})
        assert not store._ready({"other"})
