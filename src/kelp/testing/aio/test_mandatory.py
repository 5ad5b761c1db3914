"""Mandatory publishing: an unroutable message published with ``mandatory=True`` is returned to the
producer's ``on_return(exception, exchange, routing_key, message)``; without it, it is dropped quietly."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue
from kelp.exceptions import ChannelError

from .helpers import Names, declared, drain_for, drain_until, payloads

pytestmark = pytest.mark.kelp_needs("mandatory", "fanout", "topic")


class Returns:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, exception: Any, exchange: Any, routing_key: Any, message: Any) -> None:
        self.calls.append((exception, exchange, routing_key, message))


async def _settle(conn: Connection, returns: Any, expected: Any) -> None:
    """Returns may arrive asynchronously: poll the connection (bounded) until ``expected`` came, or a
    little while when none is expected."""
    if expected:
        await drain_until(conn, lambda: len(returns.calls) >= expected, timeout=5.0)
    else:
        await drain_until(conn, lambda: bool(returns.calls), timeout=0.4)


async def test_unroutable_mandatory_message_is_returned(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = await declared(conn, Exchange(names("ex"), "direct"))
        returns = Returns()
        producer = conn.Producer(on_return=returns)
        await producer.publish({"lost": True}, exchange=ex.name, routing_key="nowhere", mandatory=True)
        await _settle(conn, returns, 1)
        assert len(returns.calls) == 1
        exception, exchange, routing_key, message = returns.calls[0]
        # The broker's NO_ROUTE (AMQP reply code 312) is a channel-level refusal, not an API misuse.
        assert isinstance(exception, ChannelError)
        assert exception.reply_code == 312
        assert exchange == ex.name
        assert routing_key == "nowhere"
        assert message.payload == {"lost": True}


async def test_routable_mandatory_message_is_delivered_not_returned(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        bq = await declared(conn, Queue(names("q"), ex, routing_key="here"))
        returns = Returns()
        producer = conn.Producer(on_return=returns)
        await producer.publish("found", exchange=ex, routing_key="here", mandatory=True)
        assert await payloads(bq, 1) == ["found"]
        await _settle(conn, returns, 0)
        assert returns.calls == []


async def test_unroutable_message_without_mandatory_is_dropped_silently(
    broker_url: str, names: Names
) -> None:
    async with Connection(broker_url) as conn:
        ex = await declared(conn, Exchange(names("ex"), "fanout"))
        returns = Returns()
        producer = conn.Producer(on_return=returns)
        await producer.publish("dropped", exchange=ex.name)
        await _settle(conn, returns, 0)
        assert returns.calls == []


async def test_mandatory_to_default_exchange_without_queue_is_returned(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        returns = Returns()
        producer = conn.Producer(on_return=returns)
        missing = names("missing")
        await producer.publish("x", routing_key=missing, mandatory=True)
        await _settle(conn, returns, 1)
        assert [(exchange, key) for _, exchange, key, _ in returns.calls] == [("", missing)]


async def test_only_unroutable_messages_are_returned(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        bq = await declared(conn, Queue(names("q"), ex, routing_key="a.*"))
        returns = Returns()
        producer = conn.Producer(on_return=returns)
        for key in ("a.1", "b.1", "a.2", "b.2"):
            await producer.publish(key, exchange=ex, routing_key=key, mandatory=True)
        assert await payloads(bq, 2) == ["a.1", "a.2"]
        await _settle(conn, returns, 2)
        await drain_for(conn)  # and no third one
        assert [key for _, _, key, _ in returns.calls] == ["b.1", "b.2"]
