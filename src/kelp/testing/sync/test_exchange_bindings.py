# Generated from src/kelp/testing/aio/test_exchange_bindings.py by scripts/unasync.py; do not edit.
"""Exchange-to-exchange bindings: a message routed to a bound exchange is routed again by that exchange."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Exchange, Queue

from .helpers import Names, declared, payloads

pytestmark = pytest.mark.kelp_needs("exchange_bindings", "fanout", "topic")


def test_direct_to_fanout_chain(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        source = declared(conn, Exchange(names("src"), "direct"))
        dest = declared(conn, Exchange(names("dst"), "fanout"))
        dest.bind_to(source, routing_key="forward")
        first = declared(conn, Queue(names("q"), dest))
        second = declared(conn, Queue(names("q"), dest))
        producer = conn.Producer()
        producer.publish("kept", exchange=source.name, routing_key="forward")
        producer.publish("not forwarded", exchange=source.name, routing_key="other")
        for bq in (first, second):
            assert payloads(bq, 1) == ["kept"]
            assert bq.get() is None


def test_routing_key_is_kept_across_hops(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        source = declared(conn, Exchange(names("src"), "topic"))
        dest = declared(conn, Exchange(names("dst"), "direct"))
        dest.bind_to(source, routing_key="stock.#")
        usd = declared(conn, Queue(names("q"), dest, routing_key="stock.usd"))
        eur = declared(conn, Queue(names("q"), dest, routing_key="stock.eur"))
        producer = conn.Producer()
        producer.publish("usd", exchange=source.name, routing_key="stock.usd")
        producer.publish("eur", exchange=source.name, routing_key="stock.eur")
        producer.publish("bond", exchange=source.name, routing_key="bond.usd")
        [message] = _fetch_all(usd)
        assert message.payload == "usd"
        assert message.delivery_info["routing_key"] == "stock.usd"
        assert [m.payload for m in _fetch_all(eur)] == ["eur"]


def test_queue_reached_by_two_paths_gets_one_copy(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        source = declared(conn, Exchange(names("src"), "fanout"))
        dest = declared(conn, Exchange(names("dst"), "fanout"))
        dest.bind_to(source)
        bq = declared(conn, Queue(names("q"), source))
        bq.bind_to(dest)
        conn.Producer().publish("once", exchange=source.name)
        assert payloads(bq, 1) == ["once"]
        assert bq.get() is None


def test_two_hop_chain_and_direct_queue_on_source(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        a = declared(conn, Exchange(names("a"), "direct"))
        b = declared(conn, Exchange(names("b"), "direct"))
        c = declared(conn, Exchange(names("c"), "fanout"))
        b.bind_to(a, routing_key="k")
        c.bind_to(b, routing_key="k")
        at_a = declared(conn, Queue(names("q"), a, routing_key="k"))
        at_c = declared(conn, Queue(names("q"), c))
        conn.Producer().publish({"hops": 2}, exchange=a.name, routing_key="k")
        assert payloads(at_a, 1) == [{"hops": 2}]
        assert payloads(at_c, 1) == [{"hops": 2}]


def _fetch_all(bq: Any) -> Any:
    got = []
    while (message := bq.get()) is not None:
        message.ack()
        got.append(message)
    return got
