# Generated from src/kelp/testing/aio/test_hostile_headers.py by scripts/unasync.py; do not edit.
"""Hostile headers on the dead-letter path: whatever a producer puts in its headers (an ``x-death`` that is
not a list, a list with a non-integer count, arbitrary trees), a message that dies is dead-lettered, the
good message behind it is delivered, and the broker goes on answering every client.

On the brokers kelp implements, a malformed ``x-death`` is treated as absent and kept unchanged under
``x-death-invalid`` on the dead-lettered copy.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelp import Connection, Exchange, Queue
from kelp._broker.queue_args import INVALID_X_DEATH, valid_x_death
from kelp.testing import Capabilities

from .helpers import Names, declared, fetch

pytestmark = pytest.mark.kelp_needs("dead_letter", "fanout", "ttl", "max_length")

# Values every transport can carry in a header (AMQP field tables included): no NaN, 64-bit integers.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.binary(max_size=8)
)
trees = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
death_keys = st.sampled_from(["count", "queue", "reason", "time", "exchange", "routing-keys"])
# What a foreign producer may send as x-death: anything, or a list of tables close to the real thing.
x_deaths = trees | st.lists(st.dictionaries(death_keys, trees, max_size=4), max_size=3)
plain_keys = st.text(max_size=8).filter(lambda key: not key.startswith("x-"))
other_headers = st.dictionaries(plain_keys, trees, max_size=3)

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _kill(conn: Connection, names: Any, reason: str, headers: dict[str, Any]) -> tuple[Any, Any]:
    """Publish a message with ``headers`` and a good one behind it to a fresh work queue; make the first
    die for ``reason``. Returns (work queue, dead-letter queue)."""
    dlx = Exchange(names("dlx"), "fanout")
    dead = declared(conn, Queue(names("dead"), dlx))
    extra: dict[str, Any] = {"max_length": 1} if reason == "maxlen" else {}
    work = declared(conn, Queue(names("work"), dead_letter_exchange=dlx.name, **extra))
    producer = conn.Producer()
    producer.publish(
        "bad", routing_key=work.name, headers=headers, expiration=0 if reason == "expired" else None
    )
    if reason == "rejected":
        [message] = fetch(work, 1, ack=False)
        message.reject(requeue=False)
    producer.publish("good", routing_key=work.name)
    return work, dead


@SETTINGS
@given(x_death=x_deaths, headers=other_headers, reason=st.sampled_from(["rejected", "expired", "maxlen"]))
def test_any_x_death_is_dead_lettered_and_the_queue_goes_on(
    broker_url: str, names: Names, capabilities: Capabilities, x_death: Any, headers: Any, reason: Any
) -> None:
    if not capabilities.supports("x_death_kept_aside"):
        pytest.skip("the broker refuses (nacks) a publish with some malformed x-death values (RabbitMQ does)")
    with Connection(broker_url) as conn:
        work, dead = _kill(conn, names, reason, {**headers, "x-death": x_death})
        [dead_message] = fetch(dead, 1)
        assert dead_message.body == b"bad" or dead_message.payload == "bad"
        [death, *_] = dead_message.headers["x-death"]
        assert death["reason"] == reason
        assert death["queue"] == work.name
        if valid_x_death(x_death):
            assert INVALID_X_DEATH not in dead_message.headers
        else:
            assert dead_message.headers[INVALID_X_DEATH] == x_death
            assert death["count"] == 1
        for key, value in headers.items():
            assert dead_message.headers[key] == value
        [good] = fetch(work, 1)
        assert good.payload == "good"
    # Every other client of the broker is unaffected.
    with Connection(broker_url) as other:
        probe = declared(other, Queue(names("probe")))
        other.Producer().publish("ping", routing_key=probe.name)
        [ping] = fetch(probe, 1)
        assert ping.payload == "ping"


def test_x_death_that_is_not_a_list_is_kept_aside(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        work, dead = _kill(conn, names, "expired", {"x-death": 5})
        [dead_message] = fetch(dead, 1)
        [death, *_] = dead_message.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("expired", work.name, 1)
        if capabilities.supports("x_death_kept_aside"):
            assert dead_message.headers[INVALID_X_DEATH] == 5
        [good] = fetch(work, 1)
        assert good.payload == "good"


def test_x_death_with_a_non_integer_count_is_kept_aside(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    with Connection(broker_url) as conn:
        bad_death = [{"count": "abc", "queue": names("q"), "reason": "rejected"}]
        work, dead = _kill(conn, names, "rejected", {"x-death": bad_death})
        [dead_message] = fetch(dead, 1)
        [death, *_] = dead_message.headers["x-death"]
        assert (death["reason"], death["queue"], death["count"]) == ("rejected", work.name, 1)
        if capabilities.supports("x_death_kept_aside"):
            assert dead_message.headers[INVALID_X_DEATH] == bad_death
        [good] = fetch(work, 1)
        assert good.payload == "good"
