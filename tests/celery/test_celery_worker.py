"""Celery on kelp's engines: real ``celery worker`` processes (and the in-process test worker on memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kelp_celery_app
from celery.contrib.testing.worker import start_worker

from conftest import APP, HERE, Cluster


def test_in_process_worker_on_memory_runs_tasks_and_answers_ping() -> None:
    app = kelp_celery_app.app
    assert app.conf.broker_url == "kelp+memory://"
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING") as worker:
        results = [kelp_celery_app.add.delay(i, i) for i in range(50)]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
        assert kelp_celery_app.retry_twice.delay().get(timeout=10) == 2
        replies = app.control.ping(destination=[worker.hostname], timeout=2)
        assert replies == [{worker.hostname: {"ok": "pong"}}]


def test_tasks_round_trip(cluster: Cluster) -> None:
    cluster.start_worker("-P", "solo")
    results = [cluster.send("add", i, 1) for i in range(1000)]
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(1000)]  # type: ignore[attr-defined]


def test_countdown_eta_and_retry(cluster: Cluster) -> None:
    cluster.start_worker("-P", "solo")
    sent = time.time()
    by_countdown = cluster.send("now", countdown=1.0)
    by_eta = cluster.send("now", eta=datetime.now(UTC) + timedelta(seconds=1.5))
    retried = cluster.send("retry_twice")
    quick = cluster.send("add", 2, 3)
    # An ETA task waits unacked in the worker; the ones behind it are not held up.
    assert quick.get(timeout=10) == 5  # type: ignore[attr-defined]
    assert retried.get(timeout=10) == 2  # type: ignore[attr-defined]
    assert by_countdown.get(timeout=10) >= sent + 1.0  # type: ignore[attr-defined]
    assert by_eta.get(timeout=10) >= sent + 1.5  # type: ignore[attr-defined]


def test_inspect_ping_and_purge_from_the_command_line(cluster: Cluster) -> None:
    worker = cluster.start_worker("-P", "solo")
    env = cluster.env()
    celery = [sys.executable, "-m", "celery", "-A", APP]
    ping = subprocess.run(
        [*celery, "inspect", "ping", "-d", worker.name, "-t", "5"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    worker.stop()
    for i in range(5):
        cluster.send("add", i, i)
    purge = subprocess.run(
        [*celery, "purge", "-f", "-Q", cluster.queue],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert "Purged 5 messages" in purge.stdout


def test_warm_shutdown_loses_no_task(cluster: Cluster) -> None:
    first = cluster.start_worker("-P", "solo")
    results = [cluster.send("pause", 0.05) for _ in range(30)]
    results[2].get(timeout=20)  # type: ignore[attr-defined]
    assert first.stop() == 0
    cluster.start_worker("-P", "solo")
    assert [r.get(timeout=30) for r in results] == [0.05] * 30  # type: ignore[attr-defined]


def test_acks_late_task_of_a_killed_worker_is_redelivered(cluster: Cluster) -> None:
    doomed = cluster.start_worker("-P", "solo", "--prefetch-multiplier", "1")
    result = cluster.send("hang_once")
    first = cluster.marks / f"{result.id}.first"  # type: ignore[attr-defined]
    _wait_for(first, 20)
    cluster.start_worker("-P", "solo", "--prefetch-multiplier", "1")
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.time()
    doomed.process.wait()
    assert result.get(timeout=60) is True  # type: ignore[attr-defined]
    again = cluster.marks / f"{result.id}.redelivered"  # type: ignore[attr-defined]
    window = float(again.read_text().split()[0]) - killed_at
    print(f"redelivered {window:.2f}s after kill -9 on {cluster.url.split(':')[0]}")
    assert window < 15


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.05)
