# Generated from src/kelp/testing/aio/test_dead_letter.py by scripts/unasync.py; do not edit.
"""Dead-lettering: a message rejected without requeue, expired, or dropped from the head of a full queue
is republished to the queue's dead-letter exchange, carrying an ``x-death`` history."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Exchange, Queue

from .helpers import Names, consuming, declared, fetch, payloads, take_all

pytestmark = pytest.mark.kelp_needs("dead_letter", "fanout", "ttl", "max_length")


def _dead_letter_setup(conn: Connection, names: Names, **queue_kwargs: Any) -> Any:
    """A work queue on a direct exchange whose dead letters go to a fanout exchange with one queue."""
    work_ex = Exchange(names("work"), "direct")
    dlx = Exchange(names("dlx"), "fanout")
    dead = declared(conn, Queue(names("dead"), dlx))
    work = declared(
        conn, Queue(names("q"), work_ex, routing_key="job", dead_letter_exchange=dlx.name, **queue_kwargs)
    )
    return work_ex, work, dead


def _death(message: Any) -> Any:
    deaths = message.headers["x-death"]
    assert isinstance(deaths, list)
    assert deaths
    return deaths[0]


def test_rejected_message_is_dead_lettered_with_x_death(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        work_ex, work, dead = _dead_letter_setup(conn, names)
        conn.Producer().publish(
            {"task": "bad"}, exchange=work_ex, routing_key="job", correlation_id="corr-9", headers={"h": "v"}
        )
        [message] = fetch(work, 1, ack=False)
        message.reject(requeue=False)
        [dead_message] = fetch(dead, 1)
        assert dead_message.payload == {"task": "bad"}
        assert dead_message.properties["correlation_id"] == "corr-9"
        assert dead_message.headers["h"] == "v"
        death = _death(dead_message)
        assert death["queue"] == work.name
        assert death["reason"] == "rejected"
        assert death["count"] == 1
        assert death["exchange"] == work_ex.name
        assert list(death["routing-keys"]) == ["job"]
        assert work.get() is None


def test_requeue_does_not_dead_letter(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        _, work, dead = _dead_letter_setup(conn, names)
        conn.Producer().publish("retry me", routing_key=work.name)
        [message] = fetch(work, 1, ack=False)
        message.reject(requeue=True)
        assert payloads(work, 1) == ["retry me"]
        assert dead.get() is None


def test_dead_letter_routing_key_replaces_the_original(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        dlx = Exchange(names("dlx"), "direct")
        parked = declared(conn, Queue(names("parked"), dlx, routing_key="parked"))
        other = declared(conn, Queue(names("other"), dlx, routing_key="job"))
        work = declared(
            conn, Queue(names("q"), dead_letter_exchange=dlx.name, dead_letter_routing_key="parked")
        )
        conn.Producer().publish("x", routing_key=work.name)
        [message] = fetch(work, 1, ack=False)
        message.reject(requeue=False)
        [dead_message] = fetch(parked, 1)
        assert dead_message.delivery_info["routing_key"] == "parked"
        death = _death(dead_message)
        assert death["exchange"] == ""
        assert list(death["routing-keys"]) == [work.name]
        assert other.get() is None


def test_dead_letter_to_default_exchange(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        parked = declared(conn, Queue(names("parked")))
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": parked.name}
        work = declared(conn, Queue(names("q"), queue_arguments=arguments))
        conn.Producer().publish("to default", routing_key=work.name)
        [message] = fetch(work, 1, ack=False)
        message.reject(requeue=False)
        assert payloads(parked, 1) == ["to default"]


def test_queue_ttl_expiry_dead_letters_with_reason_expired(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        work_ex, work, dead = _dead_letter_setup(conn, names, message_ttl=0.1)
        producer = conn.Producer()
        producer.publish("e1", exchange=work_ex, routing_key="job")
        producer.publish("e2", exchange=work_ex, routing_key="job")
        messages = fetch(dead, 2)
        assert [m.payload for m in messages] == ["e1", "e2"]
        death = _death(messages[0])
        assert death["reason"] == "expired"
        assert death["queue"] == work.name
        assert death["exchange"] == work_ex.name
        assert list(death["routing-keys"]) == ["job"]
        assert death["count"] == 1
        assert work.get() is None


def test_message_expiration_dead_letters_with_reason_expired(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        work_ex, _, dead = _dead_letter_setup(conn, names)
        producer = conn.Producer()
        producer.publish("short", exchange=work_ex, routing_key="job", expiration=0.1)
        [message] = fetch(dead, 1)
        assert message.payload == "short"
        assert _death(message)["reason"] == "expired"


def test_max_length_drop_head_dead_letters_with_reason_maxlen(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        work_ex, work, dead = _dead_letter_setup(conn, names, max_length=2)
        producer = conn.Producer()
        for n in range(4):
            producer.publish(n, exchange=work_ex, routing_key="job")
        messages = fetch(dead, 2)
        assert [m.payload for m in messages] == [0, 1]
        death = _death(messages[0])
        assert death["reason"] == "maxlen"
        assert death["queue"] == work.name
        assert death["count"] == 1
        assert take_all(work) == [2, 3]


def test_x_death_count_grows_when_the_same_queue_dead_letters_again(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        retry = Exchange(names("retry"), "direct")
        name = names("q")
        # The queue dead-letters back into itself through the retry exchange.
        work = declared(conn, Queue(name, retry, routing_key=name, dead_letter_exchange=retry.name))
        conn.Producer().publish("loop", exchange=retry, routing_key=name)
        for expected_count in (1, 2):
            [message] = fetch(work, 1, ack=False)
            message.reject(requeue=False)
            [message] = fetch(work, 1, ack=False)
            deaths = message.headers["x-death"]
            assert len(deaths) == 1
            assert deaths[0]["count"] == expected_count
            assert deaths[0]["reason"] == "rejected"
            message.requeue()
        [message] = fetch(work, 1)
        assert message.payload == "loop"


def test_consumer_reject_dead_letters(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        work_ex, work, dead = _dead_letter_setup(conn, names)
        with consuming(conn, [Queue(work.name)], auto_declare=False) as inbox:
            conn.Producer().publish("via consumer", exchange=work_ex, routing_key="job")
            assert inbox.wait(conn, 1)
            inbox.messages[0].reject(requeue=False)
        [message] = fetch(dead, 1)
        assert message.payload == "via consumer"
        assert _death(message)["reason"] == "rejected"
