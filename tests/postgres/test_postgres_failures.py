"""The delivery model on postgresql://, against a real server and a real (cut) network, as the amqp and
redis delivery tests check it there:

* a publisher killed -9 right after its last publish() returned loses nothing (each publish was written to
  the socket with its commit before it returned, and the socket keeper lets the server read it all);
* a proxy that cuts every session every few hundred kB under a retried publish loop loses nothing
  (at-least-once: the outbox of unconfirmed publishes is published again); without retry a cut raises a
  kelp OperationalError or is mended by the reconnect before the next publish, never a silent drop;
* a consumer whose session is cut (the proxy, or ``pg_terminate_backend``) gives its unacked messages to
  another consumer within 2 s, flagged redelivered; it gets an OperationalError itself, and its late acks
  do not remove the copies the other consumer now holds;
* a ConsumerMixin whose session ends reconnects and gets its messages back.

Hostile input and size limits: test_postgres_limits.py; rows written from outside kelp:
test_postgres_hostile_rows.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import kelp
import kelp.aio
from kelp.exceptions import OperationalError
from kelp.mixins import ConsumerMixin
from proxy_kit import Proxy

PUBLISHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import kelp, kelp.aio

    url, queue, n, face = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if face == "sync":
        conn = kelp.Connection(url)
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"i": i}, routing_key=queue)
        os.kill(os.getpid(), signal.SIGKILL)  # the moment the last publish returned: no flush, no close

    async def main():
        conn = kelp.aio.Connection(url)
        await conn.connect()
        producer = conn.Producer()
        for i in range(n):
            await producer.publish({"i": i}, routing_key=queue)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)
POLICY = {"max_retries": 50, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}


def _proxy(url: str, cut_every: int | None = None) -> tuple[Proxy, str]:
    port = urlsplit(url).port or 5432
    proxy = Proxy(port, cut_every=cut_every)
    return proxy, url.replace(f":{port}/", f":{proxy.port}/", 1)


def _declare(url: str, name: str) -> None:
    with kelp.Connection(url) as conn:
        conn.channel().queue_declare(name, durable=True, auto_delete=False)


def _drain(url: str, queue: str) -> list[int]:
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        out = []
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            out.append(message.decode()["i"])
        return out


def _count(url: str, queue: str) -> int:
    with kelp.Connection(url) as conn:
        return conn.channel().queue_declare(queue, passive=True).message_count


@pytest.mark.parametrize("face", ["sync", "aio"])
def test_a_publisher_killed_right_after_its_last_publish_loses_nothing(pg_url: str, face: str) -> None:
    _declare(pg_url, "jobs")
    child = subprocess.run(
        [sys.executable, "-c", PUBLISHER, pg_url, "jobs", "3000", face], capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    # written before each publish returned: the server commits the tail it had not read yet on its own
    deadline = time.monotonic() + 10
    while _count(pg_url, "jobs") < 3000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _drain(pg_url, "jobs") == list(range(3000))


def _publish_through_cuts(proxied: str, n: int) -> None:
    with kelp.Connection(proxied) as conn:
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"i": i, "pad": "x" * 300}, routing_key="cut", retry=True)  # the default policy
        for _ in range(20):  # the barrier may be cut too: reconnecting publishes the outbox again
            try:
                conn.flush()
                break
            except OperationalError:
                conn.ensure_connection(**POLICY)


async def _publish_through_cuts_aio(proxied: str, n: int) -> None:
    async with kelp.aio.Connection(proxied) as conn:
        producer = conn.Producer()
        for i in range(n):
            await producer.publish(  # a short policy (the default's 1 s a retry is tested on sync)
                {"i": i, "pad": "x" * 300}, routing_key="cut", retry=True, retry_policy=POLICY
            )
        for _ in range(20):  # the barrier may be cut too: reconnecting publishes the outbox again
            try:
                await conn.flush()
                break
            except OperationalError:
                await conn.ensure_connection(**POLICY)


@pytest.mark.parametrize("face", ["sync", "aio"])
def test_a_connection_cut_every_few_hundred_kb_loses_no_retried_publish(pg_url: str, face: str) -> None:
    n = 3000
    _declare(pg_url, "cut")
    proxy, proxied = _proxy(pg_url, cut_every=300_000)
    proxied += "&max_unconfirmed=100"  # at most 100 publishes in flight, so at most 100 duplicates a cut
    try:
        if face == "sync":
            _publish_through_cuts(proxied, n)
        else:
            asyncio.run(_publish_through_cuts_aio(proxied, n))
    finally:
        proxy.close()
    assert proxy.cuts >= 3, proxy.cuts
    got = _drain(pg_url, "cut")
    missing = sorted(set(range(n)) - set(got))
    assert missing == [], f"{len(missing)} messages lost, e.g. {missing[:10]}"
    assert len(got) - n <= proxy.cuts * 101  # at most the outbox and the publish in flight at each cut


def test_without_retry_a_cut_publish_raises_a_kelp_error_and_a_returned_one_is_stored(pg_url: str) -> None:
    _declare(pg_url, "cut")
    proxy, proxied = _proxy(pg_url, cut_every=200_000)
    returned, raised = set(), set()
    try:
        with kelp.Connection(proxied) as conn:
            producer = conn.Producer()
            for i in range(2000):
                try:
                    producer.publish({"i": i, "pad": "x" * 300}, routing_key="cut")
                    returned.add(i)
                except OperationalError:  # anything else (a psycopg error) fails the test
                    raised.add(i)
                    conn.ensure_connection(**POLICY)  # publishes the lost connection's outbox again
            while True:  # the returned ones a cut left unconfirmed: published again until confirmed
                try:
                    conn.flush()
                    break
                except OperationalError:
                    conn.ensure_connection(**POLICY)
    finally:
        proxy.close()
    # A cut is found by a publish (OperationalError), or by reading results after the publishes that
    # preceded it returned: then the library reconnects and publishes the outbox again before the next.
    assert proxy.cuts >= 2, proxy.cuts
    stored = set(_drain(pg_url, "cut"))
    assert returned <= stored, sorted(returned - stored)[:10]
    assert stored <= returned | raised


def _cutters(pg_url: str) -> dict[str, Callable[[kelp.Connection, Proxy | None], None]]:
    """Ways to end a kelp connection's database session: a cut by the proxy, or pg_terminate_backend."""

    def terminate(conn: kelp.Connection, proxy: Proxy | None) -> None:
        owner = conn.transport._connection_id  # type: ignore[union-attr]
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as db:
            query = (
                f"SELECT pg_terminate_backend(pid) FROM {pg_url.rsplit('=', 1)[1]}.connections WHERE id = %s"
            )
            assert db.execute(query, (owner,)).fetchone() == (True,)

    return {"proxy": lambda conn, proxy: proxy.cut(), "terminate": terminate}  # type: ignore[union-attr]


def _drain_until(conn: kelp.Connection, done: Callable[[], bool], bound: float) -> None:
    deadline = time.monotonic() + bound
    while not done() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.05)


def _hold_ten_then_cut(cut: kelp.Connection, other: kelp.Connection, cutter: Any) -> Any:
    """``cut`` holds ten of twenty messages, ``other`` acks the other ten; then ``cutter`` ends ``cut``'s
    database session. Returns ``(held, got, seconds)``: what ``cut`` holds, what ``other`` then received
    (not acked) and how long after the cut."""
    producer = other.Producer()
    for i in range(20):
        producer.publish({"i": i}, routing_key="work")
    held: list[kelp.Message] = []
    got: list[kelp.Message] = []
    queue = kelp.Queue("work", no_declare=True)
    cut.Consumer(queue, callbacks=[lambda body, m: held.append(m)], prefetch_count=10).consume()
    _drain_until(cut, lambda: len(held) == 10, 10)
    assert len(held) == 10
    other.Consumer(queue, callbacks=[lambda body, m: got.append(m)], prefetch_count=50).consume()
    _drain_until(other, lambda: len(got) == 10, 10)
    assert len(got) == 10  # the ten nobody held
    for message in got:
        message.ack()
    got.clear()
    cutter()
    started = time.monotonic()
    _drain_until(other, lambda: len(got) == 10, 10)
    return held, got, time.monotonic() - started


@pytest.mark.parametrize("how", ["proxy", "terminate"])
def test_a_cut_consumers_messages_go_to_another_within_2s_and_it_gets_an_error(pg_url: str, how: str) -> None:
    proxy, proxied = _proxy(pg_url)
    _declare(pg_url, "work")
    try:
        with kelp.Connection(pg_url) as other, kelp.Connection(proxied) as cut:
            cutter = _cutters(pg_url)[how]
            held, got, took = _hold_ten_then_cut(cut, other, lambda: cutter(cut, proxy))
            assert sorted(m.decode()["i"] for m in got) == sorted(m.decode()["i"] for m in held)
            assert took < 2.0, took
            assert all(m.redelivered for m in got)
            # the cut consumer is told (a connection error), not left waiting for nothing
            with pytest.raises(OperationalError):
                cut.drain_events(timeout=3)
            assert not cut.connected
            for message in held:  # too late: the copies are the other consumer's now
                with pytest.raises(OperationalError):
                    message.ack()
            cut.ensure_connection(**POLICY)  # and it can go on
            assert cut.connected
        # cut's late acks were flushed as it closed, then other closed without acking: all ten are back
        assert _count(pg_url, "work") == 10
    finally:
        proxy.close()


async def _drain_until_aio(conn: kelp.aio.Connection, done: Callable[[], bool], bound: float) -> None:
    deadline = time.monotonic() + bound
    while not done() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            await conn.drain_events(timeout=0.05)


async def test_a_cut_consumer_gets_an_error_and_its_messages_go_to_another_aio(pg_url: str) -> None:
    proxy, proxied = _proxy(pg_url)
    _declare(pg_url, "work")
    queue = kelp.Queue("work", no_declare=True)
    held: list[kelp.aio.Message] = []
    got: list[kelp.aio.Message] = []
    try:
        async with kelp.aio.Connection(pg_url) as other, kelp.aio.Connection(proxied) as cut:
            producer = other.Producer()
            for i in range(5):
                await producer.publish({"i": i}, routing_key="work")
            await cut.Consumer(queue, callbacks=[lambda body, m: held.append(m)], prefetch_count=5).consume()
            await _drain_until_aio(cut, lambda: len(held) == 5, 10)
            await other.Consumer(queue, callbacks=[lambda body, m: got.append(m)]).consume()
            proxy.cut()
            started = time.monotonic()
            await _drain_until_aio(other, lambda: len(got) == 5, 10)
            assert time.monotonic() - started < 2.0
            assert sorted(m.decode()["i"] for m in got) == list(range(5))
            assert all(m.redelivered for m in got)
            with pytest.raises(OperationalError):
                await cut.drain_events(timeout=3)
            assert not cut.connected
            with pytest.raises(OperationalError):
                await held[0].ack()
            await cut.ensure_connection(**POLICY)
            assert cut.connected
            for message in got:
                await message.ack()
        assert _count(pg_url, "work") == 0
    finally:
        proxy.close()


def test_a_late_ack_before_the_loss_is_noticed_removes_nothing(pg_url: str, monkeypatch: Any) -> None:
    """The window between a session's end and its process noticing (up to a second): an ack then is
    accepted, but must not delete a copy that went back and is now another consumer's."""
    _declare(pg_url, "work")
    with kelp.Connection(pg_url) as other, kelp.Connection(f"{pg_url}&connect_timeout=5") as cut:
        store = cut.transport.session.store  # type: ignore[union-attr]
        monkeypatch.setattr(store, "owners_lost", lambda owners: None)  # it never notices
        held, got, _ = _hold_ten_then_cut(cut, other, lambda: _cutters(pg_url)["terminate"](cut, None))
        assert len(got) == 10
        for message in held:
            message.ack()
    assert _count(pg_url, "work") == 10  # other's ten, released as it closed


class HoldingWorker(ConsumerMixin):
    """Holds (never acks) the first five messages it gets, acks every other one."""

    restart_interval_start = 0.05

    def __init__(self, connection: kelp.Connection) -> None:
        self.connection = connection
        self.held: list[kelp.Message] = []
        self.acked: list[int] = []
        self.consuming: list[kelp.Connection] = []

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        return [
            Consumer(queues=[kelp.Queue("work", no_declare=True)], callbacks=[self.on_task], prefetch_count=5)
        ]

    def on_consume_ready(
        self, connection: kelp.Connection, channel: Any, consumers: Any, **kwargs: Any
    ) -> None:
        self.consuming.append(connection)

    def on_task(self, body: dict[str, int], message: kelp.Message) -> None:
        if len(self.held) < 5 and not message.redelivered:
            self.held.append(message)
        else:
            message.ack()
            self.acked.append(body["i"])


def test_a_consumer_mixin_whose_session_ends_with_a_full_window_reconnects_and_gets_them_back(
    pg_url: str,
) -> None:
    _declare(pg_url, "work")
    with kelp.Connection(pg_url) as conn:
        producer = conn.Producer()
        for i in range(10):
            producer.publish({"i": i}, routing_key="work")
        worker = HoldingWorker(conn)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while len(worker.held) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(worker.held) == 5  # its window is full: it claims nothing more
            _cutters(pg_url)["terminate"](worker.consuming[0], None)
            deadline = time.monotonic() + 5
            while len(worker.acked) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sorted(worker.acked) == list(range(10))
            assert len(worker.consuming) == 2  # it reconnected once
        finally:
            worker.should_stop = True
            thread.join(5)
    assert not thread.is_alive()


def test_the_listener_thread_survives_a_defect_and_goes_on_reaping(
    pg_url: str, monkeypatch: Any, caplog: Any
) -> None:
    """An unexpected error in the listening thread (a defect, not the server going away) is logged and the
    thread listens again: wake-ups, reaping and keep-alives must not end for the rest of the process."""
    with kelp.Connection(pg_url) as conn:
        conn.connect()
        store = conn.transport.session.store
        real_reap = store.reap
        calls: list[str] = []

        def reap() -> None:
            if not calls:
                calls.append("failed")
                raise RuntimeError("a defect")
            calls.append("reaped")
            real_reap()

        monkeypatch.setattr(store, "reap", reap)
        deadline = time.monotonic() + 10
        while calls.count("reaped") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert calls[:3] == ["failed", "reaped", "reaped"]
        assert store._thread is not None
        assert store._thread.is_alive()
        assert "the listener failed" in caplog.text
