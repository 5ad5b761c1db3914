"""postgresql:// specifics: URL options, the schema version, a dead consumer's messages, other processes,
and a server restart."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import kelp
from kelp.exceptions import InvalidURL, VersionMismatch

ROOT = Path(__file__).resolve().parents[2]


def _queue(conn: kelp.Connection, name: str = "work", durable: bool = True) -> kelp.Queue:
    queue = kelp.Queue(name, kelp.Exchange(name, "direct", durable=durable), name, durable=durable)
    queue(conn.channel()).declare()
    return queue


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("schema=Bad-Name", "schema"),
        ("connect_timeout=abc", "connect_timeout"),
        ("sslmode=sometimes", "sslmode"),
        ("prefetch=3", "no URL option prefetch"),
        ("liveness=1", "liveness"),
        ("liveness=abc", "liveness"),
        ("max_unconfirmed=0", "max_unconfirmed"),
        ("max_unconfirmed_bytes=lots", "max_unconfirmed_bytes"),
    ],
)
def test_bad_url_options_raise_invalid_url(pg_base: str, option: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        kelp.Connection(f"{pg_base}?{option}").connect()


def test_a_newer_schema_version_is_refused_clearly(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        _queue(conn)
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.split("?")[0], autocommit=True) as db:
        db.execute(f"UPDATE {schema}.meta SET value = 99 WHERE key = 'version'")
    with pytest.raises(VersionMismatch, match="version 99"), kelp.Connection(pg_url) as conn:
        conn.connect()


def test_a_foreign_schema_is_refused(pg_base: str) -> None:
    schema = f"kelp_f{os.getpid()}"
    with psycopg.connect(pg_base, autocommit=True) as db:
        db.execute(
            f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int)"
        )
    with (
        pytest.raises(VersionMismatch, match="did not write"),
        kelp.Connection(f"{pg_base}?schema={schema}") as c,
    ):
        c.connect()


def test_a_value_postgresql_cannot_store_is_a_kelp_error(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        fanout = kelp.Exchange("all", "fanout")
        kelp.Queue("work", fanout)(conn.channel()).declare()
        with pytest.raises(kelp.exceptions.PreconditionFailed, match="cannot store"):
            conn.Producer().publish("x", exchange=fanout, routing_key="a\x00b")  # a NUL: not in text
        with pytest.raises(kelp.exceptions.PreconditionFailed, match="cannot store"):
            kelp.Queue("bad\x00name")(conn.channel()).declare()


_HOLDER = """
import sys, time, kelp
with kelp.Connection(sys.argv[1]) as conn:
    queue = kelp.Queue("work", kelp.Exchange("work", "direct"), "work")
    got = []
    with conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], prefetch_count=10):
        while len(got) < 3:
            conn.drain_events(timeout=10)
        print("holding", flush=True)
        time.sleep(60)
"""


def test_a_killed_consumers_messages_come_back_redelivered_within_2s(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        queue = _queue(conn)
        producer = conn.Producer()
        for i in range(3):
            producer.publish(i, exchange=queue.exchange, routing_key="work")
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, pg_url], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding"
            assert queue(conn.channel()).get() is None  # all three are claimed by the holder
            holder.kill()
            holder.wait()
            killed = time.monotonic()
            got: list[kelp.Message] = []
            with conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)]):
                while len(got) < 3 and time.monotonic() - killed < 5:
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
                elapsed = time.monotonic() - killed
                assert sorted(m.payload for m in got) == [0, 1, 2]
                assert all(m.delivery_info["redelivered"] for m in got)
                assert elapsed < 2.0
                for message in got:
                    message.ack()
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()


_PRODUCER = """
import sys, kelp
with kelp.Connection(sys.argv[1]) as conn:
    exchange = kelp.Exchange("work", "direct")
    producer = conn.Producer()
    for i in range(200):
        producer.publish({"p": sys.argv[2], "i": i}, exchange=exchange, routing_key="work")
"""


def test_two_producer_processes_and_a_consumer_lose_nothing(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        queue = _queue(conn)
        producers = [subprocess.Popen([sys.executable, "-c", _PRODUCER, pg_url, name]) for name in ("a", "b")]
        got: list[tuple[str, int]] = []

        def on_message(body: dict[str, object], message: kelp.Message) -> None:
            got.append((str(body["p"]), int(body["i"])))  # type: ignore[call-overload]
            message.ack()

        with conn.Consumer(queue, callbacks=[on_message], prefetch_count=50):
            deadline = time.monotonic() + 30
            while len(got) < 400 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        for process in producers:
            assert process.wait(30) == 0
        assert sorted(got) == sorted((p, i) for p in "ab" for i in range(200))
        for name in "ab":  # per-producer FIFO through one queue
            assert [i for p, i in got if p == name] == list(range(200))


def test_server_restart_keeps_persistent_messages_on_durable_queues_only(pg_url: str) -> None:
    directory = os.environ.get("KELP_TEST_POSTGRES_DIR")
    if not directory:
        pytest.skip("KELP_TEST_POSTGRES_DIR is not set: no cluster this test may restart")
    with kelp.Connection(pg_url) as conn:
        durable = _queue(conn, "durable")
        transient_queue = _queue(conn, "transient", durable=False)
        producer = conn.Producer()
        producer.publish("kept", exchange=durable.exchange, routing_key="durable", delivery_mode=2)
        producer.publish("dropped", exchange=durable.exchange, routing_key="durable", delivery_mode=1)
        producer.publish("gone", exchange=transient_queue.exchange, routing_key="transient", delivery_mode=2)
        unacked = durable(conn.channel()).get()  # claimed when the server goes down: comes back
        assert unacked is not None
        assert unacked.payload == "kept"
    stale = kelp.Connection(pg_url)
    stale.connect()
    subprocess.run([str(ROOT / "scripts/postgres.sh"), "restart", directory], check=True, capture_output=True)
    # A connection open across the restart: its next operation fails (its session died with the server),
    # then it knows it is disconnected and ensure_connection opens a new session.
    with pytest.raises(kelp.exceptions.OperationalError):
        durable(stale.channel()).get()  # claims run on the connection's own session
    assert not stale.connected
    stale.ensure_connection()
    assert durable(stale.channel()).queue_declare(passive=True).message_count == 1
    stale.close()
    with kelp.Connection(pg_url) as conn:
        bound = durable(conn.channel())
        message = bound.get()
        assert message is not None
        assert message.payload == "kept"
        message.ack()
        assert bound.get() is None
        with pytest.raises(kelp.exceptions.NotFound):
            transient_queue(conn.channel()).queue_declare(passive=True)


@pytest.fixture
def roles(pg_url: str) -> Iterator[tuple[psycopg.Connection[Any], list[str]]]:
    """An administrator's session and two new login roles (``<schema>_a``, ``_b``), dropped after."""
    schema = pg_url.rsplit("schema=", 1)[1]
    names = [f"{schema}_a", f"{schema}_b"]
    admin = psycopg.connect(pg_url.split("?")[0], autocommit=True)
    try:
        for role in names:
            admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    except psycopg.errors.InsufficientPrivilege:
        admin.close()
        pytest.skip("the test cluster's user cannot create roles")
    try:
        yield admin, names
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for role in names:
            admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        admin.close()


def _as(pg_url: str, role: str) -> kelp.Connection:
    parts = urlsplit(pg_url)
    return kelp.Connection(parts._replace(netloc=f"{role}@{parts.netloc.split('@')[-1]}").geturl())


def _grant(admin: psycopg.Connection[Any], schema: str, roles: list[str]) -> None:
    grantees = ", ".join(roles)
    admin.execute(
        f"GRANT ALL ON SCHEMA {schema} TO {grantees}; GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO "
        f"{grantees}; GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {grantees}"
    )


def test_consumers_connected_as_other_roles_keep_their_messages_while_alive(
    pg_url: str, roles: tuple[psycopg.Connection[Any], list[str]]
) -> None:
    """PostgreSQL shows another role's sessions without their start time: they must not look dead."""
    admin, names = roles
    schema = pg_url.rsplit("schema=", 1)[1]
    with kelp.Connection(pg_url) as conn:
        queue = _queue(conn)
        producer = conn.Producer()
        for i in range(5):
            producer.publish(i, exchange=queue.exchange, routing_key="work")
    _grant(admin, schema, names)
    with _as(pg_url, names[0]) as a, _as(pg_url, names[1]) as b:
        held: list[kelp.Message] = []
        got: list[kelp.Message] = []
        a.Consumer(queue, callbacks=[lambda body, m: held.append(m)], prefetch_count=5).consume()
        while len(held) < 5:
            a.drain_events(timeout=5)
        b.Consumer(queue, callbacks=[lambda body, m: got.append(m)]).consume()
        deadline = time.monotonic() + 2.5  # past two checks for dead sessions
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                b.drain_events(timeout=0.1)
        assert got == []  # a is alive: it keeps them, and its consumer and queue stay
        with pytest.raises(TimeoutError):
            a.drain_events(timeout=0.2)
        owner = a.transport._connection_id  # type: ignore[union-attr]
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM {schema}.connections WHERE id = %s", (owner,))
        deadline = time.monotonic() + 2.0  # a dead session of another role is noticed as fast
        while len(got) < 5 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                b.drain_events(timeout=0.1)
        assert sorted(m.payload for m in got) == list(range(5))
        assert all(m.redelivered for m in got)


def test_a_role_without_rights_or_a_read_only_server_is_a_kelp_error(
    pg_url: str, roles: tuple[psycopg.Connection[Any], list[str]]
) -> None:
    admin, (stranger, reader) = roles
    with kelp.Connection(pg_url) as conn:
        _queue(conn)
    with pytest.raises(kelp.exceptions.AccessRefused, match="permission denied"), _as(pg_url, stranger) as c:
        c.connect()
    _grant(admin, pg_url.rsplit("schema=", 1)[1], [reader])
    admin.execute(f"ALTER ROLE {reader} SET default_transaction_read_only = on")  # as on a standby
    with pytest.raises(kelp.exceptions.OperationalError, match="read-only"), _as(pg_url, reader) as c:
        c.connect()
