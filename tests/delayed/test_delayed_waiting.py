"""A consumer already waiting when a delayed message is published (by another connection) gets it on
time: the broker wakes the wait it computed before that due time existed. On every transport named by
KELP_TEST_TRANSPORTS (default memory) that kelp brokers itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import kelp
from transport_urls import selected, url_for


@pytest.fixture(params=selected(("memory", "sqlite", "redis", "postgres")))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, tmp_path)


def test_a_waiting_consumer_gets_a_message_delayed_after_it_began_waiting(url: str) -> None:
    arrived: list[float] = []
    due: list[float] = []
    with kelp.Connection(url) as conn, kelp.Connection(url) as publisher:
        queue = kelp.Queue("wait")(conn.default_channel)
        queue.declare()

        def publish() -> None:
            time.sleep(0.1)  # the consumer is in drain_events by now, with nothing scheduled
            due.append(time.time() + 0.15)
            publisher.Producer().publish("x", routing_key="wait", countdown=0.15)

        def on_message(body: object, message: kelp.Message) -> None:
            arrived.append(time.time())
            message.ack()

        with conn.Consumer([queue], callbacks=[on_message]):
            thread = threading.Thread(target=publish)
            thread.start()
            try:
                deadline = time.monotonic() + 5
                while not arrived and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=5)  # one long wait, begun before the publish
                    except TimeoutError:
                        pass
            finally:
                thread.join()
    assert arrived, "never delivered"
    assert 0 <= arrived[0] - due[0] < 0.15, f"late by {arrived[0] - due[0]:.3f} s"
