"""Pipelined publishes on postgresql:// (kelp._broker.postgres._pipeline), against a real server whose
``messages`` table another session holds locked, so that publishes wait there, sent but not executed:

* publish returns without waiting for the server; a statement the server refuses in the middle of a stream
  is reported (MessageNacked naming its message) and the others are stored, in order;
* a topology change in the middle of a stream: the publishes routed before it are routed again, in order;
* the outbox (sent, no result yet) is published again after the publishing session is terminated;
* the outbox is bounded by count and by bytes: a publish waits for results rather than grow it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import kelp
from kelp.exceptions import MessageNacked, OperationalError

POLICY = {"max_retries": 5, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&")[0]


@contextlib.contextmanager
def _held(url: str, seconds: float = 5.0) -> Iterator[threading.Event]:
    """Hold the broker's ``messages`` table against writers (in another thread) until the event yielded
    is set, or ``seconds`` pass: publishes are sent meanwhile but wait on the server."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url.split("?")[0], autocommit=True) as admin, admin.transaction():
            admin.execute(f"LOCK TABLE {_schema(url)}.messages IN SHARE ROW EXCLUSIVE MODE")
            locked.set()
            release.wait(seconds)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(15)


def _bodies(url: str, queue: str) -> list[Any]:
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        out = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            out.append(message.decode())
        return out


def test_a_statement_refused_in_the_middle_of_a_stream_is_reported_and_the_others_are_stored(
    pg_url: str,
) -> None:
    schema = _schema(pg_url)
    refused: list[Any] = []
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as admin:
            admin.execute(
                f"CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF convert_from(NEW.body, 'UTF8') = 'bad' THEN RAISE EXCEPTION 'a test refuses it'; "
                "END IF; RETURN NEW; END $$"
            )
            admin.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON {schema}.messages "
                f"FOR EACH ROW EXECUTE FUNCTION {schema}.refuse()"
            )
        producer = conn.Producer()
        for i in range(200):
            body = "bad" if i == 100 else i
            try:
                producer.publish(body, routing_key="work")  # the refusal is not waited for here
            except MessageNacked as exc:  # a later publish reports it (and was not published itself)
                refused += exc.envelopes
                producer.publish(body, routing_key="work")
        with contextlib.suppress(MessageNacked):
            try:
                conn.flush()
            except MessageNacked as exc:
                refused += exc.envelopes
                raise
        conn.flush()  # each refusal is reported once
    assert [envelope.body for envelope in refused] == [b"bad"]
    assert _bodies(pg_url, "work") == [i for i in range(200) if i != 100]


def test_a_topology_change_in_the_middle_of_a_stream_routes_the_rest_again_in_order(pg_url: str) -> None:
    exchange = kelp.Exchange("ex", "direct")
    first, second = kelp.Queue("first", exchange, "k"), kelp.Queue("second", exchange, "other")
    with kelp.Connection(pg_url) as conn, kelp.Connection(pg_url) as other:
        channel = conn.channel()
        first(channel).declare()
        second(channel).declare()
        producer = conn.Producer()
        producer.publish(-1, exchange=exchange, routing_key="k")
        conn.flush()
        with _held(pg_url) as release:
            started = time.monotonic()
            for i in range(100):
                producer.publish(i, exchange=exchange, routing_key="k")
            elapsed = time.monotonic() - started
            # From another connection: waits for the table too, behind the first publish at most.
            binder = threading.Thread(
                target=lambda: other.channel().queue_bind("second", "ex", routing_key="k"), daemon=True
            )
            binder.start()
            time.sleep(0.3)
            release.set()
            binder.join(10)
        conn.flush()
    assert elapsed < 1.0, elapsed  # sent without waiting for the held table
    assert _bodies(pg_url, "first") == list(range(-1, 100))  # each once, in order
    routed_again = _bodies(pg_url, "second")
    assert routed_again, "no publish was routed again after the binding was added"
    assert routed_again == list(range(100 - len(routed_again), 100))


def test_the_outbox_is_published_again_after_the_publishing_session_is_terminated(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        producer = conn.Producer()
        producer.publish(-1, routing_key="work")
        conn.flush()
        with _held(pg_url) as release:
            for i in range(50):
                producer.publish(i, routing_key="work")
            pid = conn.transport._publisher._conn.pgconn.backend_pid  # type: ignore[attr-defined]
            with psycopg.connect(pg_url.split("?")[0], autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            release.set()
        with pytest.raises(OperationalError):
            conn.flush()
        assert [e.body for e in conn.transport.unconfirmed()] == [str(i).encode() for i in range(50)]
        assert not conn.connected
        conn.ensure_connection(**POLICY)  # publishes the outbox again
        conn.flush()
    assert _bodies(pg_url, "work") == list(range(-1, 50))  # none was stored before: each once


@pytest.mark.parametrize(("option", "most"), [("max_unconfirmed=10", 10), ("max_unconfirmed_bytes=2000", 3)])
def test_a_full_outbox_makes_publish_wait_for_results(pg_url: str, option: str, most: int) -> None:
    published = 0
    failed: list[BaseException] = []
    with kelp.Connection(f"{pg_url}&{option}") as conn:
        kelp.Queue("work")(conn.channel()).declare()
        producer = conn.Producer()
        producer.publish("x" * 600, routing_key="work")
        conn.flush()

        def publish() -> None:
            nonlocal published
            try:
                for _ in range(50):
                    producer.publish("x" * 600, routing_key="work")
                    published += 1
            except BaseException as exc:
                failed.append(exc)

        with _held(pg_url) as release:
            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
            time.sleep(0.5)
            assert published <= most  # the rest wait for results, not in memory
            assert len(conn.transport.unconfirmed()) <= most
            release.set()
            thread.join(15)
        assert not failed, failed
        conn.flush()
        assert published == 50
    assert len(_bodies(pg_url, "work")) == 51


def test_flush_with_a_timeout_leaves_the_outbox_and_a_later_flush_confirms_it(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        producer = conn.Producer()
        with _held(pg_url) as release:
            for i in range(20):
                producer.publish(i, routing_key="work")
            with pytest.raises(TimeoutError):
                conn.flush(timeout=0.3)
            assert len(conn.transport.unconfirmed()) == 20
            release.set()
        conn.flush()
        assert conn.transport.unconfirmed() == []
    assert _bodies(pg_url, "work") == list(range(20))


def test_with_confirm_publish_each_publish_waits_for_its_commit(pg_url: str) -> None:
    with kelp.Connection(f"{pg_url}&confirm_publish=true") as conn:
        kelp.Queue("work")(conn.channel()).declare()
        producer = conn.Producer()
        producer.publish(0, routing_key="work")
        with _held(pg_url, seconds=0.5):
            started = time.monotonic()
            producer.publish(1, routing_key="work")
            assert time.monotonic() - started >= 0.3  # waited for the held table
        assert conn.transport.unconfirmed() == []
    assert _bodies(pg_url, "work") == [0, 1]


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "unroutable-on-the-snapshot"])
def test_a_publish_the_topology_made_stale_reaches_its_queue_without_another_call(
    pg_url: str, routed: bool
) -> None:
    # Another process changes the topology after this one routed: the publish's statement stores nothing,
    # and the publish must be routed again and sent again even if its connection is never used again
    # (a publishing-only connection, as Celery's result publisher is).
    with kelp.Connection(pg_url) as consumer, kelp.Connection(pg_url) as publisher:
        kelp.Queue("existing")(consumer.default_channel).declare()
        producer = publisher.Producer()
        producer.publish("snapshot loaded", routing_key="existing")
        publisher.transport.flush(None)
        declare = (
            "import sys, kelp\n"
            "with kelp.Connection(sys.argv[1]) as c: kelp.Queue(sys.argv[2])(c.channel()).declare()"
        )
        subprocess.run([sys.executable, "-c", declare, pg_url, "declared-elsewhere"], check=True, timeout=60)
        producer.publish("after", routing_key="existing" if routed else "declared-elsewhere")
        target = kelp.Queue("existing" if routed else "declared-elsewhere")(consumer.default_channel)
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            message = target.get(no_ack=True)
            if message is not None and message.payload == "after":
                got.append(message.payload)
            time.sleep(0.02)
        assert got == ["after"], "the stale publish waited for the connection's next call"
