# Generated from src/kelp/testing/aio/test_argument_checks.py by scripts/unasync.py; do not edit.
"""Out-of-range arguments are refused with UsageError on every transport, as AMQP cannot carry them
(RabbitMQ's clients refuse them before sending): nothing is published or changed."""

from __future__ import annotations

from typing import Any

import pytest

from kelp import Connection, Queue
from kelp.exceptions import UsageError

from .helpers import Names, declared, fetch, message_count


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"priority": 256}, "priority must be an integer from 0 to 255, not 256"),
        ({"priority": -1}, "priority must be"),
        ({"priority": "high"}, "not 'high'"),
        ({"priority": 1.5}, "priority must be"),
        ({"expiration": "abc"}, "expiration must be a number of seconds >= 0, not 'abc'"),
        ({"expiration": -1}, "expiration must be"),
        ({"expiration": float("nan")}, "expiration must be"),
        ({"expiration": float("inf")}, "expiration must be"),
    ],
)
def test_publish_refuses_out_of_range_properties(
    broker_url: str, names: Names, kwargs: Any, fragment: Any
) -> None:
    with Connection(broker_url) as conn:
        bq = declared(conn, Queue(names("q"), max_priority=10))
        with pytest.raises(UsageError, match=fragment):
            conn.Producer().publish("x", routing_key=bq.name, **kwargs)
        conn.Producer().publish("ok", routing_key=bq.name, priority=255, expiration=60)
        [message] = fetch(bq, 1)
        assert message.payload == "ok"
        assert message_count(bq) == 0


@pytest.mark.parametrize("prefetch", [-1, 65536, "10", 2.5, True])
def test_qos_refuses_a_prefetch_count_amqp_cannot_carry(broker_url: str, prefetch: Any) -> None:
    with Connection(broker_url) as conn:
        with pytest.raises(UsageError, match="prefetch_count must be an integer from 0 to 65535"):
            conn.default_channel.basic_qos(0, prefetch, False)
        conn.default_channel.basic_qos(0, 65535, False)
