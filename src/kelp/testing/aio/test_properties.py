"""Message properties and headers survive the trip unchanged; delivery_mode says persistent (2) or
transient (1)."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, fetch

HEADERS = {
    "int": 1,
    "negative": -5,
    "big": 2**40,
    "float": 1.5,
    "str": "väl",
    "bool": True,
    "list": [1, "two", [3, 4]],
    "table": {"k": {"deep": "v"}, "n": 0},
}


@pytest.mark.parametrize(("delivery_mode", "expected"), [("persistent", 2), ("transient", 1), (2, 2), (1, 1)])
async def test_delivery_mode(broker_url: str, names: Names, delivery_mode: Any, expected: Any) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("m", routing_key=bq.name, delivery_mode=delivery_mode)
        [message] = await fetch(bq, 1)
        assert message.properties["delivery_mode"] == expected


async def test_exchange_delivery_mode_is_the_producers_default(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct", delivery_mode="transient")
        bq = await declared(conn, Queue(names("q"), ex, routing_key="k"))
        producer = conn.Producer(exchange=ex)
        await producer.publish("default", routing_key="k")
        await producer.publish("overridden", routing_key="k", delivery_mode="persistent")
        messages = await fetch(bq, 2)
        assert [(m.payload, m.properties["delivery_mode"]) for m in messages] == [
            ("default", 1),
            ("overridden", 2),
        ]


async def test_properties_round_trip(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish(
                {"body": 1},
                routing_key=q.name,
                correlation_id="corr-1",
                reply_to="replies",
                message_id="msg-1",
                priority=7,
                headers=HEADERS,
            )
            assert await inbox.wait(conn, 1)
            message = inbox.messages[0]
            await message.ack()
        props = message.properties
        assert props["correlation_id"] == "corr-1"
        assert props["reply_to"] == "replies"
        assert props["message_id"] == "msg-1"
        assert props["priority"] == 7
        assert props["content_type"] == "application/json"
        assert message.headers == HEADERS
        assert message.payload == {"body": 1}


async def test_headers_round_trip_on_get(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("with", routing_key=bq.name, headers=HEADERS)
        await producer.publish("without", routing_key=bq.name)
        with_headers, without_headers = await fetch(bq, 2)
        assert with_headers.headers == HEADERS
        assert without_headers.headers == {}


async def test_reply_to_accepts_a_queue(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        reply = Queue(names("reply"))
        await conn.Producer().publish("m", routing_key=bq.name, reply_to=reply)
        [message] = await fetch(bq, 1)
        assert message.properties["reply_to"] == reply.name


async def test_standard_extra_properties_round_trip(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish("m", routing_key=bq.name, app_id="kelp-tests", type="greeting")
        [message] = await fetch(bq, 1)
        assert message.properties["app_id"] == "kelp-tests"
        assert message.properties["type"] == "greeting"


async def test_explicit_content_type_sends_the_body_as_is(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish(
            b"<p>hi</p>", routing_key=bq.name, content_type="text/html", content_encoding="utf-8"
        )
        [message] = await fetch(bq, 1)
        assert message.body == b"<p>hi</p>"
        assert message.content_type == "text/html"
        assert message.properties["content_encoding"] == "utf-8"
