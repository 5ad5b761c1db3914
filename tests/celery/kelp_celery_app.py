"""The Celery app the worker tests run: configured from the environment, so a worker subprocess and the
test process build the same app.

KELP_CELERY_BROKER   the broker URL (kelp+sqlite:///..., kelp+redis://..., kelp+amqp://..., kelp+memory://)
KELP_CELERY_QUEUE    the task queue's name (unique per test run: RabbitMQ and Redis are shared)
KELP_CELERY_MARKS    a directory where tasks leave marker files the tests read
KELP_CELERY_BACKEND  the result backend (default rpc://)
KELP_CELERY_BEAT     seconds between the periodic ``tick`` task that beat sends (no schedule when unset)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import kelp.kombu  # noqa: F401  (registers the kelp+ URLs with Kombu)

QUEUE = os.environ.get("KELP_CELERY_QUEUE", "kelp-celery-test")
MARKS = Path(os.environ.get("KELP_CELERY_MARKS", "."))

app = Celery(
    "kelp_celery_app",
    broker=os.environ.get("KELP_CELERY_BROKER", "kelp+memory://"),
    backend=os.environ.get("KELP_CELERY_BACKEND", "rpc://"),
)
app.conf.update(
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=300,
)
if os.environ.get("KELP_CELERY_BEAT"):
    app.conf.beat_schedule = {
        "tick": {"task": "kelp_celery_app.tick", "schedule": float(os.environ["KELP_CELERY_BEAT"])}
    }


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def noop() -> None:
    return None


@app.task
def now() -> float:
    """When the worker ran it (for countdown and ETA)."""
    return time.time()


@app.task(bind=True, max_retries=5)
def retry_twice(self: Any) -> int:
    if self.request.retries < 2:
        raise self.retry(countdown=0.1)
    return int(self.request.retries)


@app.task
def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True, acks_late=True)
def hang_once(self: Any) -> bool:
    """acks_late: the first delivery marks its start and hangs (for the test to kill the worker); a
    redelivered one records when it arrived and returns its redelivered flag."""
    redelivered = bool(self.request.delivery_info.get("redelivered"))
    mark = MARKS / f"{self.request.id}.{'redelivered' if redelivered else 'first'}"
    mark.write_text(f"{time.time()} {os.getpid()}")
    if not redelivered:
        time.sleep(120)
    return redelivered


@app.task
def tick() -> None:
    """Sent by beat: leaves one marker per run."""
    (MARKS / f"tick-{time.time_ns()}").touch()


@app.task(rate_limit="10/s")
def limited() -> float:
    return time.time()
