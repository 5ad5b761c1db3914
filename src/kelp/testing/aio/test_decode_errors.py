"""Undecodable messages: a bad ``compression`` header or a corrupt body reaches ``on_decode_error``.

A foreign producer can set any ``compression`` header. Whatever it is — an unknown method, a body that is
not what it claims, a number — the message is still delivered: to ``on_decode_error(message, exc)``, where
it can be acked or rejected, or, when there is none, as a DecodeError raised from ``drain_events`` (as Kombu
does) after which the messages behind it are still dispatched. A ConsumerMixin keeps running.
"""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Queue
from kelp.aio.mixins import ConsumerMixin
from kelp.exceptions import DecodeError

from .helpers import Names, declared, drain_until, fetch, message_count

BAD_COMPRESSION = [
    pytest.param("bogus", b'{"a": 1}', id="unknown-method"),
    pytest.param("application/x-gzip", b"this is not zlib", id="corrupt-zlib"),
    pytest.param("bzip2", b"BZh9 truncated", id="corrupt-bz2"),
    pytest.param(5, b'{"a": 1}', id="not-a-string"),
    pytest.param(["zlib"], b'{"a": 1}', id="a-list"),
]


async def _publish_bad_then_good(conn: Connection, queue: str, compression: object, body: bytes) -> None:
    producer = conn.Producer()
    await producer.publish(
        body, routing_key=queue, content_type="application/json", headers={"compression": compression}
    )
    await producer.publish({"good": 1}, routing_key=queue)


@pytest.mark.parametrize(("compression", "body"), BAD_COMPRESSION)
async def test_bad_compression_reaches_on_decode_error_and_can_be_settled(
    broker_url: str, names: Names, compression: Any, body: Any
) -> None:
    errors: list[tuple[Any, Exception]] = []
    bodies: list[object] = []

    async def on_decode_error(message: Any, exc: Any) -> None:
        errors.append((message, exc))
        await message.reject()

    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_bad_then_good(conn, bq.name, compression, body)
        consumer = conn.Consumer(
            [bq],
            callbacks=[lambda b, m: bodies.append(b)],
            on_decode_error=on_decode_error,
            prefetch_count=10,
        )
        async with consumer:
            assert await drain_until(conn, lambda: bool(errors) and bool(bodies))
        [(message, exc)] = errors
        assert isinstance(exc, DecodeError)
        assert message.errors == [exc]
        assert message.body == body  # as it travelled: nothing could be decompressed
        assert message.state == "REJECTED"
        assert bodies == [{"good": 1}]
        assert await message_count(bq) == 0


@pytest.mark.parametrize(("compression", "body"), BAD_COMPRESSION)
async def test_bad_compression_bypasses_on_message(
    broker_url: str, names: Names, compression: Any, body: Any
) -> None:
    errors: list[Exception] = []
    seen: list[object] = []

    async def on_decode_error(message: Any, exc: Any) -> None:
        errors.append(exc)
        await message.ack()

    async def on_message(message: Any) -> None:
        seen.append(message.payload)
        await message.ack()

    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_bad_then_good(conn, bq.name, compression, body)
        async with conn.Consumer([bq], on_message=on_message, on_decode_error=on_decode_error):
            assert await drain_until(conn, lambda: bool(errors) and bool(seen))
        assert [type(exc) for exc in errors] == [DecodeError]
        assert seen == [{"good": 1}]


async def test_without_on_decode_error_drain_events_raises_and_the_next_message_still_comes(
    broker_url: str, names: Names
) -> None:
    bodies: list[object] = []
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_bad_then_good(conn, bq.name, "bogus", b"{}")
        async with conn.Consumer([bq], callbacks=[lambda b, m: bodies.append(b)], prefetch_count=10):
            with pytest.raises(DecodeError, match="unknown compression method 'bogus'"):
                await drain_until(conn, lambda: bool(bodies))
            assert await drain_until(conn, lambda: bool(bodies))
        assert bodies == [{"good": 1}]


@pytest.mark.parametrize(("compression", "body"), BAD_COMPRESSION)
async def test_get_returns_the_message_and_decode_raises(
    broker_url: str, names: Names, compression: Any, body: Any
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_bad_then_good(conn, bq.name, compression, body)
        bad, good = await fetch(bq, 2, ack=False)
        with pytest.raises(DecodeError):
            bad.decode()
        assert bad.body == body
        await bad.ack()
        assert good.payload == {"good": 1}
        await good.ack()
        assert await message_count(bq) == 0


class _Worker(ConsumerMixin):
    def __init__(self, connection: Any, queue: Any) -> None:
        self.connection = connection
        self.queue = queue
        self.bodies: list[Any] = []
        self.undecodable: list[Any] = []
        self.revived = 0

    def get_consumers(self, Consumer: Any, channel: Any) -> Any:
        return [Consumer(queues=[self.queue], callbacks=[self.on_body], prefetch_count=10)]

    async def on_connection_revived(self) -> None:
        self.revived += 1

    async def on_body(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        await message.ack()
        self.should_stop = True

    async def on_decode_error(self, message: Any, exc: Any) -> None:
        self.undecodable.append(exc)
        await message.ack()


async def test_consumer_mixin_survives_bad_compression(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await _publish_bad_then_good(conn, bq.name, "application/x-gzip", b"corrupt")
        worker = _Worker(conn, bq)
        await worker.run(safety_interval=0.1)
        assert worker.revived == 1
        assert [type(exc) for exc in worker.undecodable] == [DecodeError]
        assert worker.bodies == [{"good": 1}]
        assert await message_count(bq) == 0
