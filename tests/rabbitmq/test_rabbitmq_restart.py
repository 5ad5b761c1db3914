"""A broker restart: persistent messages on durable queues survive; the client reconnects and resumes.

Restarts the node named by ``KELP_TEST_RABBITMQ_DIR`` (the one ``scripts/rabbitmq.sh start`` started) through
``scripts/rabbitmq.sh restart``: same ports, same data directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from kelp_rabbitmq_kit import restart_node

import kelp
from kelp.exceptions import OperationalError


@pytest.fixture
def restartable(amqp_url: str) -> None:
    if not os.environ.get("KELP_TEST_RABBITMQ_DIR"):
        pytest.skip("KELP_TEST_RABBITMQ_DIR is not set: no node of our own to restart")


@pytest.mark.slow
@pytest.mark.usefixtures("restartable")
def test_persistent_messages_survive_and_consumption_resumes(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = kelp.Queue(names("durable"), durable=True, auto_delete=False)
    with kelp.Connection(amqp_url) as conn:
        producer = conn.Producer()
        for i in range(100):
            producer.publish({"n": i}, routing_key=queue.name, declare=[queue], delivery_mode="persistent")

    received: list[Any] = []

    def on_message(body: Any, message: kelp.Message) -> None:
        received.append(body["n"])
        message.ack()

    conn = kelp.Connection(amqp_url)
    try:
        consumer = conn.Consumer([queue], callbacks=[on_message], prefetch_count=10)
        consumer.consume()
        while len(received) < 10:
            conn.drain_events(timeout=5)
        consumer.cancel()  # stop taking messages; drain what is already in flight
        try:
            while True:
                conn.drain_events(timeout=0.3)
        except TimeoutError:
            pass
        taken = len(received)

        restart_node()

        started = time.monotonic()
        with pytest.raises(OperationalError):
            conn.drain_events(timeout=30)  # the restart ended our connection: we hear of it at once
        assert time.monotonic() - started < 10

        conn.ensure_connection(max_retries=20, interval_start=0.5, interval_step=0.5, interval_max=2)
        consumer.revive(conn.default_channel)
        consumer.consume()
        deadline = time.monotonic() + 30
        while len(received) < 100 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        assert taken >= 10
        assert sorted(received) == list(range(100))
    finally:
        conn.close()
