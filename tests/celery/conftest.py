"""Fixtures for running Celery on kelp: broker URLs per engine, a client app, real worker subprocesses.

Engines: sqlite always (no server); redis, amqp and postgres when ``KELP_TEST_REDIS_URL`` /
``KELP_TEST_AMQP_URL`` / ``KELP_TEST_POSTGRES_URL`` name a server (skipped, with the reason, without them).
When ``KELP_TEST_TRANSPORTS`` is set, as for the conformance suite, an engine it does not list is skipped.
Every worker a test starts is stopped when the test ends, passed or failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

import kombu
from celery import Celery
from celery.result import AsyncResult

import kelp.kombu  # noqa: F401

HERE = Path(__file__).resolve().parent
APP = "kelp_celery_app"


def engine_url(engine: str, tmp_path: Path) -> str:
    """A kelp+ broker URL on ``engine`` that no other test shares."""
    selected = os.environ.get("KELP_TEST_TRANSPORTS")
    if selected and engine not in selected.split(","):
        pytest.skip(f"KELP_TEST_TRANSPORTS={selected} does not select {engine}")
    if engine == "sqlite":
        return f"kelp+sqlite:///{tmp_path}/broker.db"
    var = {"redis": "KELP_TEST_REDIS_URL", "amqp": "KELP_TEST_AMQP_URL", "postgres": "KELP_TEST_POSTGRES_URL"}
    url = os.environ.get(var[engine])
    if not url:
        pytest.skip(f"{var[engine]} is not set: no {engine} server for the Celery tests")
    if engine == "redis":
        url += ("&" if "?" in url else "?") + f"prefix=celery-{uuid.uuid4().hex[:8]}"
    if engine == "postgres":  # a broker of its own: a fresh schema
        url += ("&" if "?" in url else "?") + f"schema=celery_{uuid.uuid4().hex[:8]}"
    return f"kelp+{url}"


class Worker:
    """A ``celery worker`` (or ``celery beat``) subprocess on the test app."""

    def __init__(self, env: dict[str, str], name: str, log: Path, args: list[str]) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP, *args],
            env=env,
            cwd=HERE,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group: kill() reaches the prefork children too
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """Warm shutdown (SIGTERM); SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes; its unacked messages go back to the queue."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self._log_file.close()


class Cluster:
    """One broker URL and task queue; the client app and the workers a test starts on them."""

    def __init__(self, url: str, tmp_path: Path, backend: str = "rpc://") -> None:
        self.url = url
        self.backend = backend
        self.queue = f"kelp-celery-{uuid.uuid4().hex[:10]}"
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        self.tmp_path = tmp_path
        self.workers: list[Worker] = []
        self.client = Celery("client", broker=url, backend=backend)
        self.client.conf.update(
            task_default_queue=self.queue,
            task_default_exchange=self.queue,
            task_default_routing_key=self.queue,
            broker_connection_retry_on_startup=True,
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KELP_CELERY_BROKER=self.url,
            KELP_CELERY_QUEUE=self.queue,
            KELP_CELERY_MARKS=str(self.marks),
            KELP_CELERY_BACKEND=self.backend,
            PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        )
        return env

    def start_worker(self, *args: str, wait: bool = True) -> Worker:
        name = f"w{len(self.workers)}-{self.queue}@localhost"
        log = self.tmp_path / f"worker{len(self.workers)}.log"
        worker = Worker(self.env(), name, log, ["worker", "-n", name, "-l", "WARNING", *args])
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def start_beat(self, interval: float) -> Worker:
        """``celery beat`` sending the ``tick`` task every ``interval`` seconds."""
        env = dict(self.env(), KELP_CELERY_BEAT=str(interval))
        schedule = self.tmp_path / "beat-schedule"
        beat = Worker(env, "beat", self.tmp_path / "beat.log", ["beat", "-s", str(schedule), "-l", "INFO"])
        self.workers.append(beat)
        return beat

    def wait_ready(self, worker: Worker, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.output()}")
            if self.client.control.ping(destination=[worker.name], timeout=0.5):
                return
        raise AssertionError(f"worker did not answer ping within {timeout}s:\n{worker.output()}")

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``celery`` command on the test app, with this cluster's settings."""
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", APP, *args],
            env=self.env(),
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def send(self, name: str, *args: object, **options: Any) -> AsyncResult:
        return self.client.send_task(f"{APP}.{name}", args, **options)

    def close(self) -> None:
        # Killed rather than stopped: a warm shutdown on Celery's blocking loop takes seconds, and
        # nothing is lost either way (the warm shutdown has a test of its own).
        for worker in self.workers:
            worker.kill()
        self.client.close()
        # RabbitMQ is shared: leave no queue or exchange behind.
        with kombu.Connection(self.url) as connection:
            channel = connection.channel()
            channel.queue_delete(self.queue)
            channel.exchange_delete(self.queue)


@pytest.fixture(params=["sqlite", "redis", "amqp", "postgres"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A client and (started on demand) workers on one engine."""
    cluster = Cluster(engine_url(request.param, tmp_path), tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
