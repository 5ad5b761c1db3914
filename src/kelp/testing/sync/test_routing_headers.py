# Generated from src/kelp/testing/aio/test_routing_headers.py by scripts/unasync.py; do not edit.
"""Headers exchanges: bindings match message headers, ``x-match`` all (the default) or any; a binding
argument with no value (None, AMQP void) matches any value of a header that is present."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Exchange, Queue

from .helpers import Names, declared, payloads, take_all

pytestmark = pytest.mark.kelp_needs("headers")

CASES = [
    # (binding arguments, message headers, matches)
    ({"x-match": "all", "format": "pdf", "type": "report"}, {"format": "pdf", "type": "report"}, True),
    (
        {"x-match": "all", "format": "pdf", "type": "report"},
        {"format": "pdf", "type": "report", "x": 1},
        True,
    ),
    ({"x-match": "all", "format": "pdf", "type": "report"}, {"format": "pdf"}, False),
    ({"x-match": "all", "format": "pdf", "type": "report"}, {"format": "pdf", "type": "log"}, False),
    ({"x-match": "all", "format": "pdf", "type": "report"}, {}, False),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {"format": "pdf"}, True),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {"type": "report", "format": "zip"}, True),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {"format": "zip", "type": "log"}, False),
    ({"x-match": "any", "format": "pdf", "type": "report"}, {}, False),
    ({"format": "pdf"}, {"format": "pdf"}, True),  # x-match defaults to all
    ({"format": "pdf", "type": "report"}, {"format": "pdf"}, False),
    ({"x-match": "all", "flag": None}, {"flag": "anything"}, True),
    ({"x-match": "all", "flag": None}, {"flag": 0}, True),
    ({"x-match": "all", "flag": None}, {"other": "x"}, False),
    ({"x-match": "any", "flag": None, "format": "pdf"}, {"flag": 1}, True),
    ({"x-match": "any", "flag": None, "format": "pdf"}, {"format": "zip"}, False),
    ({"x-match": "all", "n": 1}, {"n": 1}, True),
    ({"x-match": "all", "n": 1}, {"n": 2}, False),
    ({"x-match": "all", "n": 1}, {"n": "1"}, False),
]


@pytest.mark.parametrize(("arguments", "headers", "matches"), CASES)
def test_headers_binding(broker_url: str, names: Names, arguments: Any, headers: Any, matches: Any) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "headers")
        bq = declared(conn, Queue(names("q"), ex, binding_arguments=arguments))
        sentinel = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("m", exchange=ex, routing_key="ignored", headers=headers)
        producer.publish("flush", routing_key=sentinel.name)
        assert payloads(sentinel, 1) == ["flush"]
        assert take_all(bq) == (["m"] if matches else [])


def test_headers_exchange_routes_to_each_matching_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "headers")
        pdf = declared(conn, Queue(names("q"), ex, binding_arguments={"format": "pdf"}))
        urgent = declared(
            conn, Queue(names("q"), ex, binding_arguments={"x-match": "any", "urgent": None, "level": "high"})
        )
        producer = conn.Producer()
        producer.publish(1, exchange=ex, headers={"format": "pdf"})
        producer.publish(2, exchange=ex, headers={"format": "pdf", "urgent": True})
        producer.publish(3, exchange=ex, headers={"level": "high"})
        producer.publish(4, exchange=ex, headers={"level": "low"})
        assert payloads(pdf, 2) == [1, 2]
        assert payloads(urgent, 2) == [2, 3]
        assert pdf.get() is None
        assert urgent.get() is None


def test_headers_binding_ignores_routing_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "headers")
        bq = declared(conn, Queue(names("q"), ex, routing_key="only-this", binding_arguments={"a": "b"}))
        producer = conn.Producer()
        producer.publish("other-key", exchange=ex, routing_key="something-else", headers={"a": "b"})
        producer.publish("same-key-no-match", exchange=ex, routing_key="only-this", headers={"a": "c"})
        assert payloads(bq, 1) == ["other-key"]
        assert bq.get() is None
