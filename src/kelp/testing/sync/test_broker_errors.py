# Generated from src/kelp/testing/aio/test_broker_errors.py by scripts/unasync.py; do not edit.
"""Failures at the broker boundary raise the same kelp exception on every transport, as RabbitMQ reports
them: an invalid ``x-match`` and an unknown delivery tag are PRECONDITION_FAILED (406). And dead-letter
histories carry their times as timestamps (UTC datetimes), as RabbitMQ writes them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kelp import Connection, Exchange, Queue
from kelp.exceptions import PreconditionFailed

from .helpers import Names, declared, fetch

pytestmark = pytest.mark.kelp_needs("headers", "fanout", "exchange_bindings", "dead_letter")


def test_an_invalid_x_match_is_precondition_failed(broker_url: str, names: Names) -> None:
    headers = Exchange(names("hx"), "headers")
    with Connection(broker_url) as conn:
        declared(conn, headers)
        queue = declared(conn, Queue(names("q")))
        channel = conn.channel()
        with pytest.raises(PreconditionFailed) as caught:
            channel.queue_bind(queue.name, headers.name, "", arguments={"x-match": "most"})
        assert caught.value.reply_code == 406
        channel = conn.channel()
        with pytest.raises(PreconditionFailed):
            declared(conn, Queue(names("q"), headers, binding_arguments={"x-match": "some"}), channel)


def test_an_invalid_x_match_between_exchanges_is_precondition_failed(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        source = declared(conn, Exchange(names("src"), "headers"))
        target = declared(conn, Exchange(names("dst"), "fanout"))
        channel = conn.channel()
        with pytest.raises(PreconditionFailed):
            channel.exchange_bind(target.name, source.name, "", arguments={"x-match": "most"})


def _ack_then_use(channel: Any, delivery_tag: Any, queue_name: Any) -> None:
    channel.basic_ack(delivery_tag)
    # RabbitMQ answers a bad ack only by closing the channel, seen when the channel is next used.
    channel.queue_declare(queue_name, passive=True)


def test_an_unknown_delivery_tag_is_precondition_failed(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        queue = declared(conn, Queue(names("q")))
        channel = conn.channel()
        with pytest.raises(PreconditionFailed) as caught:
            _ack_then_use(channel, 9999, queue.name)
        assert caught.value.reply_code == 406


def test_x_death_times_are_utc_datetimes(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        graveyard = declared(conn, Queue(names("dead")))
        source = declared(
            conn, Queue(names("src"), dead_letter_exchange="", dead_letter_routing_key=graveyard.name)
        )
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        conn.Producer().publish("doomed", routing_key=source.name)
        [message] = fetch(source, 1, ack=False)
        message.reject(requeue=False)
        [dead] = fetch(graveyard, 1)
        [death] = dead.headers["x-death"]
        assert isinstance(death["time"], datetime.datetime)
        assert death["time"].utcoffset() == datetime.timedelta(0)
        after = datetime.datetime.now(datetime.UTC)
        assert before - datetime.timedelta(seconds=1) <= death["time"] <= after
