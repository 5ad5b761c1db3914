"""postgresql:// liveness: a process that hangs with its sessions open (SIGSTOP) gives its unacked messages
back after ``liveness`` seconds, and learns it when it runs again; a consumer busy far longer than
``liveness`` keeps them (PostgreSQL 14+: ``idle_session_timeout``)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import psycopg
import pytest

import kelp

LIVENESS = 3
HOLDER = """
import sys, kelp
with kelp.Connection(sys.argv[1]) as conn:
    held = []
    with conn.Consumer(kelp.Queue("work", no_declare=True), callbacks=[lambda b, m: held.append(m)]):
        while len(held) < 5:
            conn.drain_events(timeout=10)
        print("holding", flush=True)
        try:
            while True:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
        except kelp.exceptions.OperationalError as exc:
            print("lost", type(exc).__name__, flush=True)
"""


@pytest.fixture
def url(pg_url: str) -> str:
    with psycopg.connect(pg_url.split("?")[0]) as db:
        if db.info.server_version < 140000:
            pytest.skip("liveness needs PostgreSQL 14 (idle_session_timeout)")
    with kelp.Connection(pg_url) as conn:
        conn.channel().queue_declare("work", durable=True, auto_delete=False)
        producer = conn.Producer()
        for i in range(5):
            producer.publish(i, routing_key="work")
    return f"{pg_url}&liveness={LIVENESS}"


def _collect(conn: kelp.Connection, got: list[kelp.Message], until: float, want: int = 5) -> None:
    while len(got) < want and time.monotonic() < until:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)


def test_a_hung_consumers_messages_come_back_after_liveness_and_it_learns_it(url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        got: list[kelp.Message] = []
        with kelp.Connection(url) as other:
            other.Consumer(
                kelp.Queue("work", no_declare=True), callbacks=[lambda b, m: got.append(m)]
            ).consume()
            _collect(other, got, stopped + LIVENESS + 10)
            took = time.monotonic() - stopped
            assert sorted(m.payload for m in got) == list(range(5))
            assert all(m.redelivered for m in got)
            assert took < LIVENESS + 2.5, took
            holder.send_signal(signal.SIGCONT)  # it runs again: told its session is gone
            assert holder.stdout.readline().split() == ["lost", "OperationalError"]
            for message in got:
                message.ack()
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_consumer_busy_far_past_liveness_keeps_its_messages(url: str) -> None:
    held: list[kelp.Message] = []
    got: list[kelp.Message] = []
    queue = kelp.Queue("work", no_declare=True)
    with kelp.Connection(url) as busy, kelp.Connection(url) as other:
        busy.Consumer(queue, callbacks=[lambda b, m: held.append(m)]).consume()
        _collect(busy, held, time.monotonic() + 10)
        assert len(held) == 5
        other.Consumer(queue, callbacks=[lambda b, m: got.append(m)]).consume()
        _collect(other, got, time.monotonic() + 2.5 * LIVENESS)  # busy: it neither acks nor claims
        assert got == []
        for message in held:
            message.ack()
        assert busy.connected
    with kelp.Connection(url) as conn:
        assert conn.channel().queue_declare("work", passive=True).message_count == 0
