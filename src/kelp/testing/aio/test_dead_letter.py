"""Dead-lettering: a message rejected without requeue, expired, or dropped from the head of a full queue
is republished to the queue's dead-letter exchange, carrying an ``x-death`` history."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, fetch, payloads, take_all

pytestmark = pytest.mark.kelp_needs("dead_letter", "fanout", "ttl", "max_length")


async def _dead_letter_setup(conn: Connection, names: Names, **queue_kwargs: Any) -> Any:
    """A work queue on a direct exchange whose dead letters go to a fanout exchange with one queue."""
    work_ex = Exchange(names("work"), "direct")
    dlx = Exchange(names("dlx"), "fanout")
    dead = await declared(conn, Queue(names("dead"), dlx))
    work = await declared(
        conn, Queue(names("q"), work_ex, routing_key="job", dead_letter_exchange=dlx.name, **queue_kwargs)
    )
    return work_ex, work, dead


def _death(message: Any) -> Any:
    deaths = message.headers["x-death"]
    assert isinstance(deaths, list)
    assert deaths
    return deaths[0]


async def test_rejected_message_is_dead_lettered_with_x_death(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        work_ex, work, dead = await _dead_letter_setup(conn, names)
        await conn.Producer().publish(
            {"task": "bad"}, exchange=work_ex, routing_key="job", correlation_id="corr-9", headers={"h": "v"}
        )
        [message] = await fetch(work, 1, ack=False)
        await message.reject(requeue=False)
        [dead_message] = await fetch(dead, 1)
        assert dead_message.payload == {"task": "bad"}
        assert dead_message.properties["correlation_id"] == "corr-9"
        assert dead_message.headers["h"] == "v"
        death = _death(dead_message)
        assert death["queue"] == work.name
        assert death["reason"] == "rejected"
        assert death["count"] == 1
        assert death["exchange"] == work_ex.name
        assert list(death["routing-keys"]) == ["job"]
        assert await work.get() is None


async def test_requeue_does_not_dead_letter(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        _, work, dead = await _dead_letter_setup(conn, names)
        await conn.Producer().publish("retry me", routing_key=work.name)
        [message] = await fetch(work, 1, ack=False)
        await message.reject(requeue=True)
        assert await payloads(work, 1) == ["retry me"]
        assert await dead.get() is None


async def test_dead_letter_routing_key_replaces_the_original(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        dlx = Exchange(names("dlx"), "direct")
        parked = await declared(conn, Queue(names("parked"), dlx, routing_key="parked"))
        other = await declared(conn, Queue(names("other"), dlx, routing_key="job"))
        work = await declared(
            conn, Queue(names("q"), dead_letter_exchange=dlx.name, dead_letter_routing_key="parked")
        )
        await conn.Producer().publish("x", routing_key=work.name)
        [message] = await fetch(work, 1, ack=False)
        await message.reject(requeue=False)
        [dead_message] = await fetch(parked, 1)
        assert dead_message.delivery_info["routing_key"] == "parked"
        death = _death(dead_message)
        assert death["exchange"] == ""
        assert list(death["routing-keys"]) == [work.name]
        assert await other.get() is None


async def test_dead_letter_to_default_exchange(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        parked = await declared(conn, Queue(names("parked")))
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": parked.name}
        work = await declared(conn, Queue(names("q"), queue_arguments=arguments))
        await conn.Producer().publish("to default", routing_key=work.name)
        [message] = await fetch(work, 1, ack=False)
        await message.reject(requeue=False)
        assert await payloads(parked, 1) == ["to default"]


async def test_queue_ttl_expiry_dead_letters_with_reason_expired(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        work_ex, work, dead = await _dead_letter_setup(conn, names, message_ttl=0.1)
        producer = conn.Producer()
        await producer.publish("e1", exchange=work_ex, routing_key="job")
        await producer.publish("e2", exchange=work_ex, routing_key="job")
        messages = await fetch(dead, 2)
        assert [m.payload for m in messages] == ["e1", "e2"]
        death = _death(messages[0])
        assert death["reason"] == "expired"
        assert death["queue"] == work.name
        assert death["exchange"] == work_ex.name
        assert list(death["routing-keys"]) == ["job"]
        assert death["count"] == 1
        assert await work.get() is None


async def test_message_expiration_dead_letters_with_reason_expired(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        work_ex, _, dead = await _dead_letter_setup(conn, names)
        producer = conn.Producer()
        await producer.publish("short", exchange=work_ex, routing_key="job", expiration=0.1)
        [message] = await fetch(dead, 1)
        assert message.payload == "short"
        assert _death(message)["reason"] == "expired"


async def test_max_length_drop_head_dead_letters_with_reason_maxlen(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        work_ex, work, dead = await _dead_letter_setup(conn, names, max_length=2)
        producer = conn.Producer()
        for n in range(4):
            await producer.publish(n, exchange=work_ex, routing_key="job")
        messages = await fetch(dead, 2)
        assert [m.payload for m in messages] == [0, 1]
        death = _death(messages[0])
        assert death["reason"] == "maxlen"
        assert death["queue"] == work.name
        assert death["count"] == 1
        assert await take_all(work) == [2, 3]


async def test_x_death_count_grows_when_the_same_queue_dead_letters_again(
    broker_url: str, names: Names
) -> None:
    async with Connection(broker_url) as conn:
        retry = Exchange(names("retry"), "direct")
        name = names("q")
        # The queue dead-letters back into itself through the retry exchange.
        work = await declared(conn, Queue(name, retry, routing_key=name, dead_letter_exchange=retry.name))
        await conn.Producer().publish("loop", exchange=retry, routing_key=name)
        for expected_count in (1, 2):
            [message] = await fetch(work, 1, ack=False)
            await message.reject(requeue=False)
            [message] = await fetch(work, 1, ack=False)
            deaths = message.headers["x-death"]
            assert len(deaths) == 1
            assert deaths[0]["count"] == expected_count
            assert deaths[0]["reason"] == "rejected"
            await message.requeue()
        [message] = await fetch(work, 1)
        assert message.payload == "loop"


async def test_consumer_reject_dead_letters(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        work_ex, work, dead = await _dead_letter_setup(conn, names)
        async with consuming(conn, [Queue(work.name)], auto_declare=False) as inbox:
            await conn.Producer().publish("via consumer", exchange=work_ex, routing_key="job")
            assert await inbox.wait(conn, 1)
            await inbox.messages[0].reject(requeue=False)
        [message] = await fetch(dead, 1)
        assert message.payload == "via consumer"
        assert _death(message)["reason"] == "rejected"
