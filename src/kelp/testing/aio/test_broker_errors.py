"""Failures at the broker boundary raise the same kelp exception on every transport, as RabbitMQ reports
them: an invalid ``x-match`` and an unknown delivery tag are PRECONDITION_FAILED (406). And dead-letter
histories carry their times as timestamps (UTC datetimes), as RabbitMQ writes them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kelp.aio import Connection, Exchange, Queue
from kelp.exceptions import PreconditionFailed

from .helpers import Names, declared, fetch

pytestmark = pytest.mark.kelp_needs("headers", "fanout", "exchange_bindings", "dead_letter")


async def test_an_invalid_x_match_is_precondition_failed(broker_url: str, names: Names) -> None:
    headers = Exchange(names("hx"), "headers")
    async with Connection(broker_url) as conn:
        await declared(conn, headers)
        queue = await declared(conn, Queue(names("q")))
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed) as caught:
            await channel.queue_bind(queue.name, headers.name, "", arguments={"x-match": "most"})
        assert caught.value.reply_code == 406
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed):
            await declared(conn, Queue(names("q"), headers, binding_arguments={"x-match": "some"}), channel)


async def test_an_invalid_x_match_between_exchanges_is_precondition_failed(
    broker_url: str, names: Names
) -> None:
    async with Connection(broker_url) as conn:
        source = await declared(conn, Exchange(names("src"), "headers"))
        target = await declared(conn, Exchange(names("dst"), "fanout"))
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed):
            await channel.exchange_bind(target.name, source.name, "", arguments={"x-match": "most"})


async def _ack_then_use(channel: Any, delivery_tag: Any, queue_name: Any) -> None:
    await channel.basic_ack(delivery_tag)
    # RabbitMQ answers a bad ack only by closing the channel, seen when the channel is next used.
    await channel.queue_declare(queue_name, passive=True)


async def test_an_unknown_delivery_tag_is_precondition_failed(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        queue = await declared(conn, Queue(names("q")))
        channel = await conn.channel()
        with pytest.raises(PreconditionFailed) as caught:
            await _ack_then_use(channel, 9999, queue.name)
        assert caught.value.reply_code == 406


async def test_x_death_times_are_utc_datetimes(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        graveyard = await declared(conn, Queue(names("dead")))
        source = await declared(
            conn, Queue(names("src"), dead_letter_exchange="", dead_letter_routing_key=graveyard.name)
        )
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        await conn.Producer().publish("doomed", routing_key=source.name)
        [message] = await fetch(source, 1, ack=False)
        await message.reject(requeue=False)
        [dead] = await fetch(graveyard, 1)
        [death] = dead.headers["x-death"]
        assert isinstance(death["time"], datetime.datetime)
        assert death["time"].utcoffset() == datetime.timedelta(0)
        after = datetime.datetime.now(datetime.UTC)
        assert before - datetime.timedelta(seconds=1) <= death["time"] <= after
