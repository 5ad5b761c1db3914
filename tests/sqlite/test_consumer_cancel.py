"""A queue deleted by another process cancels this process's consumers of it (as RabbitMQ's basic.cancel)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from kelp import Connection, Queue
from kelp.exceptions import ConsumerCancelled

pytestmark = pytest.mark.timeout(60)

DELETE = "import kelp; c = kelp.Connection({url!r}); c.default_channel.queue_delete('doomed'); c.close()"


def _drain_until_cancelled(conn: Connection) -> ConsumerCancelled:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except ConsumerCancelled as exc:
            return exc
        except TimeoutError:
            pass
    raise AssertionError("drain_events never raised ConsumerCancelled")


def test_queue_deleted_by_another_process_cancels_the_consumer(db_url: str) -> None:
    bodies: list[object] = []
    with Connection(db_url) as conn:
        doomed, kept = Queue("doomed"), Queue("kept")
        consumer = conn.Consumer([doomed, kept], callbacks=[lambda body, message: bodies.append(body)])
        with consumer:
            subprocess.run([sys.executable, "-c", DELETE.format(url=db_url)], check=True, timeout=30)
            assert "doomed" in str(_drain_until_cancelled(conn))
            assert consumer.active_queues == ["kept"]
            conn.Producer().publish("still here", routing_key="kept")
            conn.drain_events(timeout=5)
            assert bodies == ["still here"]
