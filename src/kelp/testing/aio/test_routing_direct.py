"""Direct exchanges and the default exchange: a message goes to every queue bound with its exact key."""

from __future__ import annotations

from kelp.aio import Connection, Exchange, Queue, binding

from .helpers import Names, consuming, declared, drain_for, fetch, payloads


async def test_direct_routes_only_the_exact_key(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        bq = await declared(conn, Queue(names("q"), ex, routing_key="apple"))
        producer = conn.Producer()
        for key in ("apple", "Apple", "apple.pie", "", "banana", "apple"):
            await producer.publish({"key": key}, exchange=ex, routing_key=key)
        assert await payloads(bq, 2) == [{"key": "apple"}, {"key": "apple"}]
        assert await bq.get() is None


async def test_delivery_info_names_exchange_and_routing_key(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), ex, routing_key="k1")
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish("hello", exchange=ex, routing_key="k1")
            assert await inbox.wait(conn, 1)
        message = inbox.messages[0]
        assert inbox.bodies == ["hello"]
        assert message.delivery_info["exchange"] == ex.name
        assert message.delivery_info["routing_key"] == "k1"
        assert message.delivery_info["redelivered"] is False
        assert message.delivery_tag == message.delivery_info["delivery_tag"]


async def test_default_exchange_routes_to_queue_named_by_key(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        other = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish({"n": 1}, exchange="", routing_key=bq.name)
        await producer.publish({"n": 2}, routing_key=bq.name)
        messages = await fetch(bq, 2)
        assert [m.payload for m in messages] == [{"n": 1}, {"n": 2}]
        assert messages[0].delivery_info["exchange"] == ""
        assert messages[0].delivery_info["routing_key"] == bq.name
        assert await other.get() is None


async def test_default_exchange_drops_key_without_queue(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("lost", routing_key=names("nobody"))
        await producer.publish("kept", routing_key=bq.name)
        assert await payloads(bq, 1) == ["kept"]
        assert await bq.get() is None


async def test_same_key_copies_to_every_bound_queue(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        first = await declared(conn, Queue(names("q"), ex, routing_key="k"))
        second = await declared(conn, Queue(names("q"), ex, routing_key="k"))
        other = await declared(conn, Queue(names("q"), ex, routing_key="other"))
        await conn.Producer().publish([1, 2, 3], exchange=ex, routing_key="k")
        assert await payloads(first, 1) == [[1, 2, 3]]
        assert await payloads(second, 1) == [[1, 2, 3]]
        assert await other.get() is None


async def test_several_bindings_on_one_queue(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), bindings=[binding(ex, routing_key="red"), binding(ex, routing_key="blue")])
        bq = await declared(conn, q)
        producer = conn.Producer()
        for key in ("red", "green", "blue", "red"):
            await producer.publish(key, exchange=ex, routing_key=key)
        assert await payloads(bq, 3) == ["red", "blue", "red"]
        assert await bq.get() is None


async def test_message_matching_two_bindings_is_delivered_once(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        bq = await declared(conn, Queue(names("q"), ex, routing_key="k"))
        await bq.bind_to(ex, routing_key="k")  # the same binding again is a no-op
        other = Exchange(names("ex"), "fanout")
        await declared(conn, other)
        await bq.bind_to(other)
        producer = conn.Producer()
        await producer.publish("once", exchange=ex, routing_key="k")
        await producer.publish("via-fanout", exchange=other, routing_key="whatever")
        assert await payloads(bq, 2) == ["once", "via-fanout"]
        assert await bq.get() is None


async def test_unbind_stops_routing_that_key_only(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        q = Queue(names("q"), bindings=[binding(ex, routing_key="a"), binding(ex, routing_key="b")])
        bq = await declared(conn, q)
        producer = conn.Producer()
        await producer.publish("a1", exchange=ex, routing_key="a")
        await bq.unbind_from(ex, routing_key="a")
        await producer.publish("a2", exchange=ex, routing_key="a")
        await producer.publish("b1", exchange=ex, routing_key="b")
        assert await payloads(bq, 2) == ["a1", "b1"]
        assert await bq.get() is None


async def test_bind_to_after_declare_adds_a_route(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        await declared(conn, ex)
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish("before", exchange=ex, routing_key="late")
        await bq.bind_to(ex, routing_key="late")
        await producer.publish("after", exchange=ex, routing_key="late")
        assert await payloads(bq, 1) == ["after"]
        assert await bq.get() is None


async def test_consumer_sees_only_its_routes(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "direct")
        qa = Queue(names("q"), ex, routing_key="a")
        qb = Queue(names("q"), ex, routing_key="b")
        await declared(conn, qb)
        async with consuming(conn, [qa]) as inbox:
            producer = conn.Producer()
            await producer.publish("to-b", exchange=ex, routing_key="b")
            await producer.publish("to-a", exchange=ex, routing_key="a")
            assert await inbox.wait(conn, 1)
            await drain_for(conn)
            assert inbox.bodies == ["to-a"]
            await inbox.messages[0].ack()
