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
import kombu
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import TimeLimitExceeded

from conftest import APP, HERE, Cluster


def test_in_process_worker_on_memory_runs_tasks_and_answers_ping() -> None:
    app = kelp_celery_app.app
    assert app.conf.broker_url == "kelp+memory://"
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING") as worker:
        results = [kelp_celery_app.add.delay(i, i) for i in range(50)]
        assert [r.get(timeout=10) for r in results] == [2 * i for i in range(50)]
        assert kelp_celery_app.retry_twice.delay().get(timeout=10) == 2
        # rate_limit="10/s": the worker holds the later ones back (unacked) and runs them in turn.
        times = sorted(r.get(timeout=10) for r in [kelp_celery_app.limited.delay() for _ in range(6)])
        assert times[-1] - times[0] >= 0.35
        replies = app.control.ping(destination=[worker.hostname], timeout=2)
        assert replies == [{worker.hostname: {"ok": "pong"}}]
        # Remote control starts and stops consumers on the worker's live connection.
        added = app.control.add_consumer("extra", destination=[worker.hostname], reply=True)
        assert added == [{worker.hostname: {"ok": "add consumer extra"}}]
        assert kelp_celery_app.add.apply_async((20, 22), queue="extra").get(timeout=10) == 42
        cancelled = app.control.cancel_consumer("extra", destination=[worker.hostname], reply=True)
        assert cancelled == [{worker.hostname: {"ok": "no longer consuming from extra"}}]
        parked = kelp_celery_app.add.apply_async((1, 1), queue="extra")
        time.sleep(0.5)
        assert parked.state == "PENDING"
        with app.connection_for_write() as connection:
            assert connection.default_channel.queue_purge("extra") == 1


def test_tasks_round_trip(cluster: Cluster) -> None:
    cluster.start_worker("-P", "solo")
    results = [cluster.send("add", i, 1) for i in range(1000)]
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(1000)]


def test_countdown_eta_and_retry_on_the_threads_pool(cluster: Cluster) -> None:
    cluster.start_worker("-P", "threads", "-c", "4")
    sent = time.time()
    by_countdown = cluster.send("now", countdown=1.0)
    by_eta = cluster.send("now", eta=datetime.now(UTC) + timedelta(seconds=1.5))
    retried = cluster.send("retry_twice")
    quick = cluster.send("add", 2, 3)
    # An ETA task waits unacked in the worker; the ones behind it are not held up.
    assert quick.get(timeout=10) == 5
    assert retried.get(timeout=10) == 2
    assert by_countdown.get(timeout=10) >= sent + 1.0
    assert by_eta.get(timeout=10) >= sent + 1.5


def test_command_line_inspect_status_bindings_report_and_purge(cluster: Cluster) -> None:
    worker = cluster.start_worker("-P", "solo")
    ping = cluster.run("inspect", "ping", "-d", worker.name, "-t", "5")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    status = cluster.run("status", "-t", "5")
    assert f"{worker.name}: OK" in status.stdout, status.stdout + status.stderr
    bindings = cluster.run("list", "bindings")
    if cluster.url.startswith("kelp+amqp"):
        # RabbitMQ lists bindings only through its HTTP management API, as with Kombu's amqp transport.
        assert "Your transport cannot list bindings" in bindings.stderr
    else:
        assert bindings.returncode == 0, bindings.stdout + bindings.stderr
        assert f"{cluster.queue} {cluster.queue} {cluster.queue}" in " ".join(bindings.stdout.split())
    report = cluster.run("report")
    assert "transport:kelp" in report.stdout, report.stdout + report.stderr
    worker.stop()
    for i in range(5):
        cluster.send("add", i, i)
    purge = cluster.run("purge", "-f", "-Q", cluster.queue)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert "Purged 5 messages" in purge.stdout


def test_warm_shutdown_loses_no_task(cluster: Cluster) -> None:
    first = cluster.start_worker("-P", "solo")
    results = [cluster.send("pause", 0.05) for _ in range(30)]
    results[2].get(timeout=20)
    assert first.stop() == 0
    cluster.start_worker("-P", "solo")
    assert [r.get(timeout=30) for r in results] == [0.05] * 30


def test_acks_late_task_of_a_killed_worker_is_redelivered(cluster: Cluster) -> None:
    doomed = cluster.start_worker("-P", "solo", "--prefetch-multiplier", "1")
    result = cluster.send("hang_once")
    first = cluster.marks / f"{result.id}.first"
    _wait_for(first, 20)
    cluster.start_worker("-P", "solo", "--prefetch-multiplier", "1")
    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.time()
    doomed.process.wait()
    assert result.get(timeout=60) is True
    again = cluster.marks / f"{result.id}.redelivered"
    window = float(again.read_text().split()[0]) - killed_at
    print(f"redelivered {window:.2f}s after kill -9 on {cluster.url.split(':')[0]}")
    assert window < 15


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.05)


def test_prefork_pool_with_events_inspect_control_and_time_limits(cluster: Cluster, tmp_path: Path) -> None:
    worker = cluster.start_worker("-P", "prefork", "-c", "2", "-E")
    events_log = (tmp_path / "events.log").open("wb")
    dump = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", APP, "events", "--dump"],
        env=cluster.env(), cwd=HERE, stdout=events_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(2)  # the event receiver's queue must exist before the events are sent
        results = [cluster.send("add", i, i) for i in range(100)]
        assert [r.get(timeout=30) for r in results] == [2 * i for i in range(100)]
        limited = cluster.send("pause", 10, time_limit=1)
        running = cluster.send("pause", 1.5)
        time.sleep(0.5)
        inspect = cluster.client.control.inspect(destination=[worker.name], timeout=3)
        active = inspect.active()[worker.name]
        assert {task["id"] for task in active} >= {running.id}
        assert f"{APP}.add" in inspect.registered()[worker.name]
        assert [q["name"] for q in inspect.active_queues()[worker.name]] == [cluster.queue]
        assert inspect.stats()[worker.name]["pool"]["max-concurrency"] == 2
        reply = cluster.client.control.rate_limit(
            f"{APP}.add", "100/s", destination=[worker.name], reply=True
        )
        assert reply == [{worker.name: {"ok": "new rate limit set successfully"}}]
        with pytest.raises(TimeLimitExceeded):
            limited.get(timeout=20)
        assert running.get(timeout=20) == 1.5
        time.sleep(1)
    finally:
        dump.terminate()
        dump.wait(10)
        events_log.close()
    events = (tmp_path / "events.log").read_text()
    assert f"task succeeded: {APP}.add({results[-1].id})" in events


def test_beat_sends_periodic_tasks(tmp_path: Path) -> None:
    cluster = Cluster(f"kelp+sqlite:///{tmp_path}/beat.db", tmp_path)
    try:
        cluster.start_worker("-P", "solo")
        cluster.start_beat(0.3)
        deadline = time.monotonic() + 20
        while len(list(cluster.marks.glob("tick-*"))) < 3:
            assert time.monotonic() < deadline, cluster.workers[-1].output()
            time.sleep(0.1)
    finally:
        cluster.close()


def test_redis_result_backend(tmp_path: Path) -> None:
    redis_url = os.environ.get("KELP_TEST_REDIS_URL")
    if not redis_url:
        pytest.skip("KELP_TEST_REDIS_URL is not set: no Redis for the result backend")
    cluster = Cluster(f"kelp+sqlite:///{tmp_path}/b.db", tmp_path, backend=redis_url)
    try:
        cluster.start_worker("-P", "solo")
        results = [cluster.send("add", i, 2) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [i + 2 for i in range(20)]
    finally:
        cluster.close()


def test_broker_transport_setting_with_a_plain_kelp_url(tmp_path: Path) -> None:
    app = Celery("plain", broker=f"sqlite:///{tmp_path}/plain.db", backend="rpc://")
    app.conf.broker_transport = "kelp.kombu:Transport"
    app.conf.broker_connection_retry_on_startup = True

    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        assert mul.delay(6, 7).get(timeout=10) == 42
    assert app.connection().as_uri() == f"kelp+sqlite:///{tmp_path}/plain.db"
    app.close()


def test_a_worker_on_several_queues_is_not_held_up_by_an_idle_one(cluster: Cluster) -> None:
    """Celery asks kelp for one window for the channel of all its queues (global prefetch): an idle queue
    consumed first must not keep the busy one's tasks from that window."""
    idle = f"{cluster.queue}-idle"
    cluster.start_worker("-P", "solo", "-Q", f"{idle},{cluster.queue}")
    results = [cluster.send("add", i, 1) for i in range(20)]
    assert [r.get(timeout=20) for r in results] == [i + 1 for i in range(20)]
    with kombu.Connection(cluster.url) as connection:
        connection.default_channel.queue_delete(idle)
