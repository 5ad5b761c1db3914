"""postgresql:// at the boundary: text PostgreSQL cannot store, keys too long to index and messages too
large are refused with a kelp error before anything is stored (never a retryable OperationalError); NUL
characters and large messages round-trip intact."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

import kelp
from kelp._broker.postgres._route import MAX_MESSAGE_BYTES
from kelp.exceptions import PreconditionFailed

RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"headers": {"k": "\ud800"}}, id="header-value"),
        pytest.param({"headers": {"\udfff": 1}}, id="header-key"),
        pytest.param({"routing_key": "k\ud800"}, id="routing-key"),
        pytest.param({"correlation_id": "\ud800"}, id="property"),
    ],
)
def test_text_postgresql_cannot_store_is_refused_with_a_kelp_error(pg_url: str, bad: dict[str, Any]) -> None:
    with kelp.Connection(pg_url) as conn:
        fanout = kelp.Exchange("all", "fanout")
        kelp.Queue("work", fanout)(conn.channel()).declare()
        producer = conn.Producer(exchange=fanout)
        with pytest.raises(PreconditionFailed, match="cannot store"):
            producer.publish("x", **{"routing_key": "k", **bad})
        with pytest.raises(PreconditionFailed, match="not UTF-8"):
            conn.channel().queue_declare("bad\udc80name")
        producer.publish("after", routing_key="k")
        message = conn.channel().basic_get("work")
        assert message is not None
        assert message.decode() == "after"  # nothing half-stored before it


def test_a_binding_key_too_long_to_index_is_refused(pg_url: str) -> None:
    key = "".join(f"{i:x}" for i in range(5000))  # incompressible: beyond an index entry's 8 kB
    with kelp.Connection(pg_url) as conn:
        channel = conn.channel()
        channel.queue_declare("work")
        channel.exchange_declare("ex", "direct")
        with pytest.raises(PreconditionFailed, match="cannot store"):  # not OperationalError: no retry helps
            channel.queue_bind("work", "ex", key)
        channel.queue_bind("work", "ex", "short")
        conn.Producer().publish("x", exchange="ex", routing_key="short")
        assert conn.channel().basic_get("work", no_ack=True) is not None


def test_nul_in_header_keys_and_values_round_trips(pg_url: str) -> None:
    headers = {"a\x00b": "c\x00d", "nested": {"\x00": ["\x00"]}}
    with kelp.Connection(pg_url) as conn:
        conn.channel().queue_declare("work")
        conn.Producer().publish(b"\x00body\x00", routing_key="work", headers=headers)
        message = conn.channel().basic_get("work")
        assert message is not None
        assert message.body == b"\x00body\x00"
        assert message.headers == headers


def test_a_large_message_round_trips_intact(pg_url: str) -> None:
    body = bytes(range(256)) * (64 * 1024 * 4)  # 64 MiB
    with kelp.Connection(pg_url) as conn:
        conn.channel().queue_declare("big", durable=True, auto_delete=False)
        conn.Producer().publish(body, routing_key="big", content_type="application/data")
        message = conn.channel().basic_get("big")
        assert message is not None
        assert message.body == body
        message.ack()


def test_a_message_over_the_limit_is_refused_not_retried_and_nothing_is_stored(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        conn.channel().queue_declare("big")
        producer = conn.Producer(routing_key="big", serializer="raw")
        for big in (
            {"body": b"\0" * (MAX_MESSAGE_BYTES + 1)},
            {"body": b"", "headers": {"h": "x" * MAX_MESSAGE_BYTES}},
        ):
            with pytest.raises(PreconditionFailed, match="larger than postgresql:// stores"):
                producer.publish(**big, retry=True, retry_policy=RETRY)
        producer.publish(b"after")
        message = conn.channel().basic_get("big", no_ack=True)
        assert message is not None
        assert message.body == b"after"
        assert conn.channel().basic_get("big") is None


@pytest.mark.slow
def test_a_fanout_of_a_large_message_past_1_gib_reaches_every_queue(pg_url: str) -> None:
    """PostgreSQL takes no statement over 1 GiB: the copies are stored in several, in one transaction.
    (About 50 s: PostgreSQL compresses and logs 1.1 GB; before, publish failed with OperationalError.)"""
    body = b"\0" * (100 * 2**20)  # zeros: PostgreSQL compresses them on disk
    queues = [f"q{i}" for i in range(11)]
    with kelp.Connection(pg_url) as conn:
        fanout = kelp.Exchange("all", "fanout")
        for name in queues:
            kelp.Queue(name, fanout)(conn.channel()).declare()
        conn.Producer().publish(body, exchange=fanout, content_type="application/data")
        for name in queues:
            message = conn.channel().basic_get(name, no_ack=True)
            assert message is not None, name
            assert message.body == body


@pytest.mark.parametrize("payload", ["r:x:work", "r:", "w:soon", "zzz", "d:work", "r:1:" + "q" * 200])
def test_a_malformed_announcement_on_the_channel_keeps_the_listener_waking_consumers(
    pg_url: str, pg_base: str, payload: str
) -> None:
    """Any role that may connect to the database may NOTIFY on the broker's channel: an announcement
    kelp did not write is ignored (logged), and the listener goes on waking consumers for the rest."""
    with kelp.Connection(pg_url) as consumer_conn:
        got: list[Any] = []
        with consumer_conn.Consumer(
            kelp.Queue("work"), callbacks=[lambda body, message: got.append(body) or message.ack()]
        ):
            store = consumer_conn.transport.session.store
            with psycopg.connect(pg_base.split("?")[0], autocommit=True) as raw:
                raw.execute("SELECT pg_notify(%s, %s)", (store.channel, payload))
            time.sleep(0.3)  # the listener has read the bad announcement
            # Another process's publish reaches this one only through the listener's wake-up.
            subprocess.run(
                [sys.executable, "-c", _PUBLISH_ONE, pg_url],
                check=True,
                timeout=60,
            )
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    consumer_conn.drain_events(timeout=deadline - time.monotonic())
            assert got == ["after"]
            assert store._thread is not None
            assert store._thread.is_alive()


_PUBLISH_ONE = """
import sys, kelp
with kelp.Connection(sys.argv[1]) as conn:
    conn.Producer().publish("after", routing_key="work")
"""
