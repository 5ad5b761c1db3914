"""connection.blocked: a memory alarm on the test node makes publishers wait (bounded), then resume."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kelp_rabbitmq_kit import rabbitmqctl

import kelp
import kelp.aio
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
    options = {"blocked_timeout": 1.0, "confirms": False}
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


def outcome(call: Callable[[], object]) -> tuple[float, str]:
    """How long ``call()`` took, and "returned" or the OperationalError it raised."""
    started = time.monotonic()
    try:
        call()
        result = "returned"
    except OperationalError as exc:
        result = str(exc)
    return time.monotonic() - started, result


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"confirm_publish": True}], ids=["pipelined", "confirm_publish"])
def test_the_first_publish_after_the_alarm_is_bounded_by_blocked_timeout(
    amqp_url: str, names: Callable[[str], str], alarm: Callable[[bool], None], options: dict[str, Any]
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, transport_options={"blocked_timeout": 1.0, **options}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        alarm(True)
        # the first publish after the alarm (the broker blocks us only once it sees it), a later one and
        # the barrier: each returns or raises within blocked_timeout
        calls = [
            lambda: ch.publish_batch([Envelope(b"first", {"delivery_mode": 2}, {}, "", queue)]),
            lambda: ch.publish_batch([Envelope(b"second", {"delivery_mode": 2}, {}, "", queue)]),
            lambda: conn.flush(timeout=None),
        ]
        for call in calls:
            took, result = outcome(call)
            assert took < 4
            assert result == "returned" or "blocked" in result, result
        wait_blocked(conn, True)
        alarm(False)
        wait_blocked(conn, False)


@pytest.mark.slow
async def test_the_first_publish_after_the_alarm_is_bounded_aio(
    amqp_url: str, names: Callable[[str], str], alarm: Callable[[bool], None]
) -> None:
    queue = names("q")
    options = {"blocked_timeout": 1.0, "confirm_publish": True}
    async with kelp.aio.Connection(amqp_url, transport_options=options) as conn:
        ch = await conn.channel()
        await ch.queue_declare(queue, durable=True, auto_delete=False)
        alarm(True)
        producer = conn.Producer()
        for body in ("first", "second"):
            started = time.monotonic()
            result = "returned"
            try:
                await producer.publish(body, routing_key=queue)
            except OperationalError as exc:
                result = str(exc)
            assert time.monotonic() - started < 4
            assert result == "returned" or "blocked" in result, result
        alarm(False)
