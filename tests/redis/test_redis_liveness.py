"""Redelivery by liveness: a killed consumer's messages go to another consumer, none lost and none twice;
a consumer that keeps beating keeps its messages however long it works; one that stops beating loses them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kelp_redis_kit import LIVENESS

from kelp import Connection, Queue
from kelp import aio as kelp_aio
from kelp.exceptions import OperationalError

WORKER = Path(__file__).with_name("kelp_redis_worker.py")
#: Enough for liveness to expire and the next heartbeat to notice, with a wide margin for slow machines.
RELEASE_WAIT = 10 * LIVENESS + 5


def _read_line(process: subprocess.Popen[str], prefix: str) -> list[int]:
    assert process.stdout is not None
    line = process.stdout.readline()  # bounded: the worker exits after 20 s if it cannot fill its window
    assert line.startswith(prefix + " "), f"worker said {line!r} (exit status {process.poll()})"
    return [int(n) for n in json.loads(line[len(prefix) + 1 :])]


def test_killed_consumer_messages_are_redelivered_to_another_none_lost(redis_url):
    total, prefetch, ack = 60, 10, 5
    with Connection(redis_url) as conn:
        Queue("work")(conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(total):
            producer.publish(n, routing_key="work")

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), redis_url, "work", str(prefetch), str(ack)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            acked = _read_line(worker, "acked")
            holding = _read_line(worker, "holding")
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
            if worker.stdout is not None:
                worker.stdout.close()
        assert acked == list(range(ack))
        assert holding == list(range(ack, ack + prefetch))

        got: dict[int, bool] = {}
        duplicates: list[int] = []

        def on_message(body, message):
            if body in got:
                duplicates.append(body)
            got[body] = message.redelivered
            message.ack()

        with conn.Consumer([Queue("work")], callbacks=[on_message], prefetch_count=20):
            deadline = time.monotonic() + RELEASE_WAIT
            while len(got) < total - ack and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.25)
                except TimeoutError:
                    pass
            quiet = time.monotonic() + 3 * LIVENESS  # nothing more, nothing twice
            while time.monotonic() < quiet:
                try:
                    conn.drain_events(timeout=0.25)
                except TimeoutError:
                    pass
        assert sorted(got) == list(range(ack, total))
        assert duplicates == []
        assert {n for n, redelivered in got.items() if redelivered} == set(holding)
        assert Queue("work")(conn.default_channel).queue_declare(passive=True).message_count == 0
        stats = {name: (ready, unacked) for name, ready, unacked, _ in conn.transport.queue_stats()}
        assert stats["work"] == (0, 0)


def _rival(url: str, seconds: float, seen: list[object], ready: threading.Event) -> None:
    """Another consumer of the same queue, draining for ``seconds`` in its own connection."""
    with Connection(url) as conn, conn.Consumer([Queue("long")], callbacks=[lambda body, m: seen.append(m)]):
        ready.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass
        for message in seen:
            message.ack()  # type: ignore[attr-defined]


@pytest.mark.parametrize("beating", [True, False], ids=["beating", "frozen"])
def test_busy_consumer_keeps_its_message_only_while_it_beats(redis_url, beating):
    """The rival starts once the owner holds the message and works on it for 4x liveness. A beating owner
    keeps it; a frozen one (its heartbeat thread stalled too) loses it to the rival and learns that it
    was declared dead when it thaws."""
    work = 4 * LIVENESS
    with Connection(redis_url) as owner:
        Queue("long")(owner.default_channel).declare()
        owner.Producer().publish("long job", routing_key="long")
        rival_seen: list[object] = []
        done: list[object] = []
        ready = threading.Event()
        rival = threading.Thread(target=_rival, args=(redis_url, work + 2 * LIVENESS, rival_seen, ready))
        thawed = threading.Event()
        ticker = owner.transport._ticker
        beat = ticker._tick

        def stalled_beat():
            thawed.wait(30)
            beat()

        def slow(body, message):
            if not beating:
                ticker._tick = stalled_beat
            rival.start()
            assert ready.wait(10)
            time.sleep(work)  # a long task; the heartbeat thread keeps beating meanwhile (unless frozen)
            thawed.set()
            done.append(message)

        with owner.Consumer([Queue("long")], callbacks=[slow], prefetch_count=1):
            deadline = time.monotonic() + 10
            while not done and time.monotonic() < deadline:
                try:
                    owner.drain_events(timeout=0.25)
                except TimeoutError:
                    pass
            assert done
            if beating:
                done[0].ack()  # type: ignore[attr-defined]
                owner.transport.flush()
            rival.join(timeout=30)
            assert not rival.is_alive()
            if beating:
                assert rival_seen == []
                assert Queue("long")(owner.default_channel).get() is None
            else:
                assert [m.payload for m in rival_seen] == ["long job"]  # type: ignore[attr-defined]
                assert rival_seen[0].redelivered is True  # type: ignore[attr-defined]
                deadline = time.monotonic() + 10
                while owner.transport.is_connected and time.monotonic() < deadline:
                    time.sleep(0.05)
                with pytest.raises(OperationalError, match="liveness"):
                    owner.drain_events(timeout=0.1)


async def test_busy_async_consumer_keeps_its_message(redis_url):
    work = 4 * LIVENESS
    async with kelp_aio.Connection(redis_url) as owner, kelp_aio.Connection(redis_url) as rival:
        await kelp_aio.Queue("long")(owner.default_channel).declare()
        await owner.Producer().publish("long job", routing_key="long")
        rival_seen: list[object] = []
        done: list[object] = []
        tasks: list[asyncio.Task[None]] = []

        async def rival_drain():
            async with rival.Consumer(
                [kelp_aio.Queue("long")], callbacks=[lambda b, m: rival_seen.append(m)]
            ):
                deadline = time.monotonic() + work + 2 * LIVENESS
                while time.monotonic() < deadline:
                    try:
                        await rival.drain_events(timeout=0.1)
                    except TimeoutError:
                        pass

        async def slow(body, message):
            tasks.append(asyncio.create_task(rival_drain()))
            await asyncio.sleep(work)  # awaits: the heartbeat task keeps beating
            done.append(message)

        async with owner.Consumer([kelp_aio.Queue("long")], callbacks=[slow], prefetch_count=1):
            await owner.drain_events(timeout=10)
            assert len(done) == 1
            await done[0].ack()  # type: ignore[attr-defined]
            await asyncio.wait_for(tasks[0], timeout=30)
        assert rival_seen == []
        assert await kelp_aio.Queue("long")(owner.default_channel).get() is None
