# Generated from src/kelp/testing/aio/test_properties.py by scripts/unasync.py; do not edit.
"""Message properties and headers survive the trip unchanged; delivery_mode says persistent (2) or
transient (1)."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Exchange, Queue

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
def test_delivery_mode(broker_url: str, names: Names, delivery_mode: Any, expected: Any) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("m", routing_key=bq.name, delivery_mode=delivery_mode)
        [message] = fetch(bq, 1)
        assert message.properties["delivery_mode"] == expected


def test_exchange_delivery_mode_is_the_producers_default(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct", delivery_mode="transient")
        bq = declared(conn, Queue(names("q"), ex, routing_key="k"))
        producer = conn.Producer(exchange=ex)
        producer.publish("default", routing_key="k")
        producer.publish("overridden", routing_key="k", delivery_mode="persistent")
        messages = fetch(bq, 2)
        assert [(m.payload, m.properties["delivery_mode"]) for m in messages] == [
            ("default", 1),
            ("overridden", 2),
        ]


def test_properties_round_trip(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        with consuming(conn, [q]) as inbox:
            conn.Producer().publish(
                {"body": 1},
                routing_key=q.name,
                correlation_id="corr-1",
                reply_to="replies",
                message_id="msg-1",
                priority=7,
                headers=HEADERS,
            )
            assert inbox.wait(conn, 1)
            message = inbox.messages[0]
            message.ack()
        props = message.properties
        assert props["correlation_id"] == "corr-1"
        assert props["reply_to"] == "replies"
        assert props["message_id"] == "msg-1"
        assert props["priority"] == 7
        assert props["content_type"] == "application/json"
        assert message.headers == HEADERS
        assert message.payload == {"body": 1}


def test_headers_round_trip_on_get(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("with", routing_key=bq.name, headers=HEADERS)
        producer.publish("without", routing_key=bq.name)
        with_headers, without_headers = fetch(bq, 2)
        assert with_headers.headers == HEADERS
        assert without_headers.headers == {}


def test_reply_to_accepts_a_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        reply = Queue(names("reply"))
        conn.Producer().publish("m", routing_key=bq.name, reply_to=reply)
        [message] = fetch(bq, 1)
        assert message.properties["reply_to"] == reply.name


def test_standard_extra_properties_round_trip(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish("m", routing_key=bq.name, app_id="kelp-tests", type="greeting")
        [message] = fetch(bq, 1)
        assert message.properties["app_id"] == "kelp-tests"
        assert message.properties["type"] == "greeting"


def test_explicit_content_type_sends_the_body_as_is(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        conn.Producer().publish(
            b"<p>hi</p>", routing_key=bq.name, content_type="text/html", content_encoding="utf-8"
        )
        [message] = fetch(bq, 1)
        assert message.body == b"<p>hi</p>"
        assert message.content_type == "text/html"
        assert message.properties["content_encoding"] == "utf-8"
