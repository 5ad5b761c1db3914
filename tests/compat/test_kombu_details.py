"""Details where a Kombu program must behave the same on kelp: each scenario runs under real Kombu and
under kelp (both on their in-memory brokers) and the observable results are compared."""

from __future__ import annotations

import uuid
from types import ModuleType
from typing import Any

import kombu
import pytest

import kelp

LIBRARIES = [pytest.param(kombu, id="kombu"), pytest.param(kelp, id="kelp")]


def _url() -> str:
    return f"memory://{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_autoretry_passes_the_channel_and_returns_it(library: ModuleType) -> None:
    calls: list[tuple[Any, ...]] = []

    def fun(a: int, b: int = 0, channel: Any = None) -> int:
        calls.append((a, b, channel is not None))
        return a + b

    with library.Connection(_url()) as conn:
        given = conn.channel()
        result, channel = conn.autoretry(fun, given)(1, b=2)
        assert (result, channel is given) == (3, True)
        result, channel = conn.autoretry(fun)(4)
        assert result == 4
        assert channel is not None
    assert calls == [(1, 2, True), (4, 0, True)]


@pytest.mark.parametrize("library", LIBRARIES)
def test_acking_a_message_received_without_acks_does_nothing(library: ModuleType) -> None:
    with library.Connection(_url()) as conn:
        buffer = conn.SimpleBuffer("details")
        buffer.put({"n": 1})
        message = buffer.get(timeout=1)
        message.ack()  # no_ack delivery: nothing to acknowledge, and no error
        assert message.payload == {"n": 1}
        buffer.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_no_declare_queue_is_not_declared_by_a_consumer(library: ModuleType) -> None:
    name = f"nd-{uuid.uuid4().hex[:8]}"
    with library.Connection(_url()) as conn:
        exchange = library.Exchange(f"{name}-x", "direct", no_declare=True)
        queue = library.Queue(name, exchange, routing_key="k", no_declare=True)
        library.Consumer(conn, [queue]).declare()
        with pytest.raises(conn.channel_errors):
            conn.channel().queue_declare(name, passive=True)
        with pytest.raises(conn.channel_errors):
            conn.channel().exchange_declare(f"{name}-x", "direct", passive=True)
