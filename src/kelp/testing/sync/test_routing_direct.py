# Generated from src/kelp/testing/aio/test_routing_direct.py by scripts/unasync.py; do not edit.
"""Direct exchanges and the default exchange: a message goes to every queue bound with its exact key."""

from __future__ import annotations

from kelp import Connection, Exchange, Queue, binding

from .helpers import Names, consuming, declared, drain_for, fetch, payloads


def test_direct_routes_only_the_exact_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        bq = declared(conn, Queue(names("q"), ex, routing_key="apple"))
        producer = conn.Producer()
        for key in ("apple", "Apple", "apple.pie", "", "banana", "apple"):
            producer.publish({"key": key}, exchange=ex, routing_key=key)
        assert payloads(bq, 2) == [{"key": "apple"}, {"key": "apple"}]
        assert bq.get() is None


def test_delivery_info_names_exchange_and_routing_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), ex, routing_key="k1")
        with consuming(conn, [q]) as inbox:
            conn.Producer().publish("hello", exchange=ex, routing_key="k1")
            assert inbox.wait(conn, 1)
        message = inbox.messages[0]
        assert inbox.bodies == ["hello"]
        assert message.delivery_info["exchange"] == ex.name
        assert message.delivery_info["routing_key"] == "k1"
        assert message.delivery_info["redelivered"] is False
        assert message.delivery_tag == message.delivery_info["delivery_tag"]


def test_default_exchange_routes_to_queue_named_by_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        other = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange="", routing_key=bq.name)
        producer.publish({"n": 2}, routing_key=bq.name)
        messages = fetch(bq, 2)
        assert [m.payload for m in messages] == [{"n": 1}, {"n": 2}]
        assert messages[0].delivery_info["exchange"] == ""
        assert messages[0].delivery_info["routing_key"] == bq.name
        assert other.get() is None


def test_default_exchange_drops_key_without_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("lost", routing_key=names("nobody"))
        producer.publish("kept", routing_key=bq.name)
        assert payloads(bq, 1) == ["kept"]
        assert bq.get() is None


def test_same_key_copies_to_every_bound_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        first = declared(conn, Queue(names("q"), ex, routing_key="k"))
        second = declared(conn, Queue(names("q"), ex, routing_key="k"))
        other = declared(conn, Queue(names("q"), ex, routing_key="other"))
        conn.Producer().publish([1, 2, 3], exchange=ex, routing_key="k")
        assert payloads(first, 1) == [[1, 2, 3]]
        assert payloads(second, 1) == [[1, 2, 3]]
        assert other.get() is None


def test_several_bindings_on_one_queue(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), bindings=[binding(ex, routing_key="red"), binding(ex, routing_key="blue")])
        bq = declared(conn, q)
        producer = conn.Producer()
        for key in ("red", "green", "blue", "red"):
            producer.publish(key, exchange=ex, routing_key=key)
        assert payloads(bq, 3) == ["red", "blue", "red"]
        assert bq.get() is None


def test_message_matching_two_bindings_is_delivered_once(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        bq = declared(conn, Queue(names("q"), ex, routing_key="k"))
        bq.bind_to(ex, routing_key="k")  # the same binding again is a no-op
        other = Exchange(names("ex"), "fanout")
        declared(conn, other)
        bq.bind_to(other)
        producer = conn.Producer()
        producer.publish("once", exchange=ex, routing_key="k")
        producer.publish("via-fanout", exchange=other, routing_key="whatever")
        assert payloads(bq, 2) == ["once", "via-fanout"]
        assert bq.get() is None


def test_unbind_stops_routing_that_key_only(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), bindings=[binding(ex, routing_key="a"), binding(ex, routing_key="b")])
        bq = declared(conn, q)
        producer = conn.Producer()
        producer.publish("a1", exchange=ex, routing_key="a")
        bq.unbind_from(ex, routing_key="a")
        producer.publish("a2", exchange=ex, routing_key="a")
        producer.publish("b1", exchange=ex, routing_key="b")
        assert payloads(bq, 2) == ["a1", "b1"]
        assert bq.get() is None


def test_bind_to_after_declare_adds_a_route(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        declared(conn, ex)
        bq = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish("before", exchange=ex, routing_key="late")
        bq.bind_to(ex, routing_key="late")
        producer.publish("after", exchange=ex, routing_key="late")
        assert payloads(bq, 1) == ["after"]
        assert bq.get() is None


def test_consumer_sees_only_its_routes(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        qa = Queue(names("q"), ex, routing_key="a")
        qb = Queue(names("q"), ex, routing_key="b")
        declared(conn, qb)
        with consuming(conn, [qa]) as inbox:
            producer = conn.Producer()
            producer.publish("to-b", exchange=ex, routing_key="b")
            producer.publish("to-a", exchange=ex, routing_key="a")
            assert inbox.wait(conn, 1)
            drain_for(conn)
            assert inbox.bodies == ["to-a"]
            inbox.messages[0].ack()
