"""Foreign messages published with pika (bytes RabbitMQ relays unchecked) reach kelp consumers intact.

Each message below once failed kelp's whole connection: the message went back to the queue and every
consumer that received it died. Now each arrives, can be settled, and the good messages behind it follow.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import kelp
from kelp.mixins import ConsumerMixin

pika = pytest.importorskip("pika")
pika_data = pytest.importorskip("pika.data")

WAIT = 15.0
NOT_UTF8 = b"\xff\xfe\xc3("


class _RawTimestamp(int):
    """A header value pika writes as an AMQP timestamp (``T``) of any size (pika takes only datetimes)."""


@pytest.fixture
def raw_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    encode_value = pika_data.encode_value

    def encode(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, _RawTimestamp):
            pieces.append(b"T" + struct.pack(">Q", int(value)))
            return 9
        return int(encode_value(pieces, value))

    monkeypatch.setattr(pika_data, "encode_value", encode)


FOREIGN: list[tuple[str, dict[str, Any]]] = [
    ("content_type", {"content_type": NOT_UTF8}),
    ("message_id", {"message_id": NOT_UTF8, "correlation_id": b"\xc3", "type": b"\x80", "app_id": b"\xfe"}),
    ("content_encoding", {"content_encoding": NOT_UTF8, "reply_to": b"\xff"}),
    ("header_key", {"headers": {NOT_UTF8: 1, "ok": "fine"}}),
    ("header_timestamp", {"headers": {"t63": _RawTimestamp(2**63), "t64": _RawTimestamp(2**64 - 1)}}),
]


def _publish_foreign(amqp_url: str, exchange: str, queue: str, good: int) -> None:
    """Every foreign message, then one through ``exchange`` with a non-UTF-8 routing key, then ``good``
    JSON messages."""
    pconn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = pconn.channel()
        channel.confirm_delivery()
        for name, props in FOREIGN:
            channel.basic_publish("", queue, name.encode(), pika.BasicProperties(**props))
        channel.basic_publish(exchange, NOT_UTF8, b"routing_key", pika.BasicProperties())  # type: ignore[arg-type]
        for n in range(good):
            body = f'{{"good": {n}}}'.encode()
            channel.basic_publish("", queue, body, pika.BasicProperties(content_type="application/json"))
    finally:
        pconn.close()


@pytest.fixture
def loaded_queue(amqp_url: str, names: Callable[[str], str], raw_timestamps: None) -> tuple[kelp.Queue, int]:
    queue_name, exchange_name = names("foreign"), names("foreign-fanout")
    exchange = kelp.Exchange(exchange_name, "fanout", auto_delete=True)
    queue = kelp.Queue(queue_name, exchange)
    with kelp.Connection(amqp_url) as conn:
        queue(conn.default_channel).declare()
    _publish_foreign(amqp_url, exchange_name, queue_name, good=3)
    return queue, len(FOREIGN) + 1 + 3


def _check_foreign(messages: dict[bytes, Any]) -> None:
    assert messages[b"content_type"].content_type.encode("utf-8", "surrogateescape") == NOT_UTF8
    props = messages[b"message_id"].properties
    assert props["message_id"].encode("utf-8", "surrogateescape") == NOT_UTF8
    assert props["correlation_id"] == "\udcc3"
    assert messages[b"content_encoding"].content_encoding.encode("utf-8", "surrogateescape") == NOT_UTF8
    assert messages[b"header_key"].headers == {NOT_UTF8.decode("utf-8", "surrogateescape"): 1, "ok": "fine"}
    assert messages[b"header_timestamp"].headers == {"t63": 2**63, "t64": 2**64 - 1}
    routed = messages[b"routing_key"].delivery_info["routing_key"]
    assert routed.encode("utf-8", "surrogateescape") == NOT_UTF8


def test_consumer_receives_foreign_messages_and_the_good_ones_behind(
    amqp_url: str, loaded_queue: tuple[kelp.Queue, int]
) -> None:
    queue, expected = loaded_queue
    received: dict[bytes, Any] = {}
    with kelp.Connection(amqp_url) as conn:

        def on_message(message: Any) -> None:
            received[message.body] = message
            message.ack()

        with kelp.Consumer(conn, [queue], on_message=on_message, prefetch_count=2):
            deadline = time.monotonic() + WAIT
            while len(received) < expected and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        assert len(received) == expected, sorted(received)
        _check_foreign(received)
        assert [received[f'{{"good": {n}}}'.encode()].decode() for n in range(3)] == [
            {"good": n} for n in range(3)
        ]
        # the same connection still works: the queue is empty, every message was acked
        assert conn.default_channel.queue_declare(queue.name, passive=True).message_count == 0


class _Worker(ConsumerMixin):
    def __init__(self, connection: kelp.Connection, queue: kelp.Queue, expected: int) -> None:
        self.connection = connection
        self.queue = queue
        self.expected = expected
        self.bodies: list[Any] = []
        self.undecodable: list[Any] = []
        self.revived = 0

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        return [Consumer(queues=[self.queue], callbacks=[self.on_body], prefetch_count=2)]

    def on_connection_revived(self) -> None:
        self.revived += 1

    def on_body(self, body: Any, message: Any) -> None:
        self.bodies.append(body)
        message.ack()
        self._maybe_stop()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self.undecodable.append(message.body)
        message.ack()
        self._maybe_stop()

    def _maybe_stop(self) -> None:
        if len(self.bodies) + len(self.undecodable) >= self.expected:
            self.should_stop = True


def test_consumer_mixin_keeps_running_through_foreign_messages(
    amqp_url: str, loaded_queue: tuple[kelp.Queue, int]
) -> None:
    queue, expected = loaded_queue
    worker = _Worker(kelp.Connection(amqp_url), queue, expected)
    timer = threading.Timer(WAIT, lambda: setattr(worker, "should_stop", True))
    timer.start()
    try:
        worker.run(safety_interval=0.2)
    finally:
        timer.cancel()
    assert worker.revived == 1  # never reconnected
    assert [body for body in worker.bodies if isinstance(body, dict)] == [{"good": n} for n in range(3)]
    assert len(worker.bodies) + len(worker.undecodable) == expected
    assert b"content_type" in worker.undecodable  # its content type names no serializer


async def test_asyncio_consumer_receives_foreign_messages(
    amqp_url: str, loaded_queue: tuple[kelp.Queue, int]
) -> None:
    import kelp.aio

    queue, expected = loaded_queue
    received: dict[bytes, Any] = {}

    async def on_message(message: Any) -> None:
        received[message.body] = message
        await message.ack()

    async with kelp.aio.Connection(amqp_url) as conn:
        async with conn.Consumer([kelp.aio.Queue(queue.name)], on_message=on_message, prefetch_count=2):
            deadline = time.monotonic() + WAIT
            while len(received) < expected and time.monotonic() < deadline:
                try:
                    await conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
        assert len(received) == expected, sorted(received)
        _check_foreign(received)
