"""Exchange-to-exchange bindings: a message routed to a bound exchange is routed again by that exchange."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, declared, payloads

pytestmark = pytest.mark.kelp_needs("exchange_bindings", "fanout", "topic")


async def test_direct_to_fanout_chain(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        source = await declared(conn, Exchange(names("src"), "direct"))
        dest = await declared(conn, Exchange(names("dst"), "fanout"))
        await dest.bind_to(source, routing_key="forward")
        first = await declared(conn, Queue(names("q"), dest))
        second = await declared(conn, Queue(names("q"), dest))
        producer = conn.Producer()
        await producer.publish("kept", exchange=source.name, routing_key="forward")
        await producer.publish("not forwarded", exchange=source.name, routing_key="other")
        for bq in (first, second):
            assert await payloads(bq, 1) == ["kept"]
            assert await bq.get() is None


async def test_routing_key_is_kept_across_hops(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        source = await declared(conn, Exchange(names("src"), "topic"))
        dest = await declared(conn, Exchange(names("dst"), "direct"))
        await dest.bind_to(source, routing_key="stock.#")
        usd = await declared(conn, Queue(names("q"), dest, routing_key="stock.usd"))
        eur = await declared(conn, Queue(names("q"), dest, routing_key="stock.eur"))
        producer = conn.Producer()
        await producer.publish("usd", exchange=source.name, routing_key="stock.usd")
        await producer.publish("eur", exchange=source.name, routing_key="stock.eur")
        await producer.publish("bond", exchange=source.name, routing_key="bond.usd")
        [message] = await _fetch_all(usd)
        assert message.payload == "usd"
        assert message.delivery_info["routing_key"] == "stock.usd"
        assert [m.payload for m in await _fetch_all(eur)] == ["eur"]


async def test_queue_reached_by_two_paths_gets_one_copy(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        source = await declared(conn, Exchange(names("src"), "fanout"))
        dest = await declared(conn, Exchange(names("dst"), "fanout"))
        await dest.bind_to(source)
        bq = await declared(conn, Queue(names("q"), source))
        await bq.bind_to(dest)
        await conn.Producer().publish("once", exchange=source.name)
        assert await payloads(bq, 1) == ["once"]
        assert await bq.get() is None


async def test_two_hop_chain_and_direct_queue_on_source(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        a = await declared(conn, Exchange(names("a"), "direct"))
        b = await declared(conn, Exchange(names("b"), "direct"))
        c = await declared(conn, Exchange(names("c"), "fanout"))
        await b.bind_to(a, routing_key="k")
        await c.bind_to(b, routing_key="k")
        at_a = await declared(conn, Queue(names("q"), a, routing_key="k"))
        at_c = await declared(conn, Queue(names("q"), c))
        await conn.Producer().publish({"hops": 2}, exchange=a.name, routing_key="k")
        assert await payloads(at_a, 1) == [{"hops": 2}]
        assert await payloads(at_c, 1) == [{"hops": 2}]


async def _fetch_all(bq: Any) -> Any:
    got = []
    while (message := await bq.get()) is not None:
        await message.ack()
        got.append(message)
    return got
