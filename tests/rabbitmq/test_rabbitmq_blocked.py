"""connection.blocked: a memory alarm on the test node makes publishers wait (bounded), then resume."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kelp_rabbitmq_kit import rabbitmqctl

import kelp
from kelp._envelope import Envelope
from kelp.exceptions import OperationalError


@pytest.fixture
def alarm(amqp_url: str) -> Iterator[Callable[[bool], None]]:
    """``alarm(True)`` raises a memory alarm on the node (it blocks publishers); always cleared after."""
    if not os.environ.get("KELP_TEST_RABBITMQ_DIR"):
        pytest.skip("KELP_TEST_RABBITMQ_DIR is not set: no node of our own to raise an alarm on")

    def set_alarm(on: bool) -> None:
        rabbitmqctl("set_vm_memory_high_watermark", "0.0000001" if on else "0.4")

    try:
        yield set_alarm
    finally:
        set_alarm(False)


def wait_blocked(conn: kelp.Connection, blocked: bool, timeout: float = 10) -> None:
    transport = conn.transport
    assert transport is not None
    deadline = time.monotonic() + timeout
    while (getattr(transport, "blocked", None) is not None) != blocked:
        assert time.monotonic() < deadline, f"the broker did not {'block' if blocked else 'unblock'} us"
        time.sleep(0.05)


@pytest.mark.slow
def test_publish_waits_while_blocked_then_resumes(
    amqp_url: str, names: Callable[[str], str], alarm: Callable[[bool], None]
) -> None:
    queue = names("q")
    options = {"blocked_timeout": 1.0, "confirm_publish": False}
    with kelp.Connection(amqp_url, transport_options=options) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        alarm(True)
        # RabbitMQ tells a connection it is blocked when it next publishes
        ch.publish_batch([Envelope(b"probe", {}, {}, "", queue)])
        wait_blocked(conn, True)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="blocked"):
            ch.publish_batch([Envelope(b"too soon", {}, {}, "", queue)])
        assert 0.9 < time.monotonic() - started < 5

        assert conn.transport is not None
        conn.transport.blocked_timeout = 30  # type: ignore[attr-defined]
        threading.Timer(1.0, alarm, (False,)).start()
        started = time.monotonic()
        assert ch.publish_batch([Envelope(b"after", {}, {}, "", queue)]) == []
        assert time.monotonic() - started > 0.5  # it waited for the alarm to clear
        bodies = []
        for _ in range(2):
            message = ch.basic_get(queue, no_ack=True)
            assert message is not None
            bodies.append(message.body)
        assert bodies == [b"probe", b"after"]
