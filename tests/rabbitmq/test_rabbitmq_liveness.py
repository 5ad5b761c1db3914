"""Heartbeats, a silent peer, a cut connection and a malformed server, on both faces."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest
from kelp_rabbitmq_kit import CHANNEL_OPEN_OK, HANDSHAKE, FakeServer, Proxy

import kelp
import kelp.aio
from kelp._envelope import Envelope
from kelp.exceptions import ConnectionError, OperationalError


def test_short_heartbeat_keeps_an_idle_connection_alive(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url, heartbeat=1) as conn:
        assert conn.transport is not None
        assert conn.transport.info()["heartbeat"] == 1
        ch = conn.channel()
        ch.queue_declare(queue)
        time.sleep(3.5)  # the broker drops a peer silent for 2 intervals: we must have sent heartbeats
        assert conn.connected
        assert ch.publish_batch([Envelope(b"alive", {}, {}, "", queue)]) == []
        message = ch.basic_get(queue)
        assert message is not None
        assert message.body == b"alive"


async def test_short_heartbeat_keeps_an_idle_connection_alive_aio(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    async with kelp.aio.Connection(amqp_url, heartbeat=1) as conn:
        ch = await conn.channel()
        await ch.queue_declare(queue)
        await asyncio.sleep(3.5)
        assert conn.connected
        assert await ch.publish_batch([Envelope(b"alive", {}, {}, "", queue)]) == []
        message = await ch.basic_get(queue)
        assert message is not None
        assert message.body == b"alive"


def test_a_peer_that_stops_answering_is_detected(proxy: Proxy) -> None:
    with kelp.Connection(proxy.url(), heartbeat=1) as conn:
        conn.channel()
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="heartbeat"):
            conn.drain_events(timeout=10)
        assert time.monotonic() - started < 5


async def test_a_peer_that_stops_answering_is_detected_aio(proxy: Proxy) -> None:
    async with kelp.aio.Connection(proxy.url(), heartbeat=1) as conn:
        await conn.channel()
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="heartbeat"):
            await conn.drain_events(timeout=10)
        assert time.monotonic() - started < 5


def test_a_cut_while_publishing_loses_nothing_confirmed(
    amqp_url: str, proxy: Proxy, names: Callable[[str], str]
) -> None:
    queue = names("q")
    published: list[bytes] = []
    confirmed: set[bytes] = set()
    with kelp.Connection(amqp_url) as direct:
        direct.channel().queue_declare(queue, durable=True, auto_delete=False)
    conn = kelp.Connection(proxy.url())
    try:
        ch = conn.channel()
        threading.Timer(0.5, proxy.cut).start()
        started = time.monotonic()

        def publish_until_cut() -> None:
            for batch in range(10_000):
                bodies = [b"%d-%d" % (batch, i) for i in range(20)]
                ch.publish_batch([Envelope(b, {"delivery_mode": 2}, {}, "", queue) for b in bodies])
                published.extend(bodies)
                assert time.monotonic() - started < 20

        with pytest.raises(OperationalError):
            publish_until_cut()
        # confirms are pipelined: what the broker confirmed is what left the outbox
        assert conn.transport is not None
        unconfirmed = {envelope.body for envelope in conn.transport.unconfirmed()}
        confirmed = set(published) - unconfirmed
        assert confirmed, "the cut came before anything was confirmed"
    finally:
        conn.close()
    with kelp.Connection(amqp_url) as direct:
        ch = direct.channel()
        stored = set()
        while (message := ch.basic_get(queue, no_ack=True)) is not None:
            stored.add(message.body)
    assert confirmed <= stored


def test_ensure_reconnects_after_a_cut(amqp_url: str, proxy: Proxy, names: Callable[[str], str]) -> None:
    queue = kelp.Queue(names("q"), durable=True, auto_delete=False)
    with kelp.Connection(proxy.url()) as conn:
        producer = conn.Producer()
        publish = conn.ensure(producer, producer.publish, max_retries=3, interval_start=0.1)
        publish("before", routing_key=queue.name, declare=[queue])
        proxy.cut()
        publish("after", routing_key=queue.name, declare=[queue])
        # "after" may have been written before the loss was noticed: then the barrier fails, and the
        # reconnect publishes it again from the outbox
        for _ in range(3):
            try:
                conn.flush(timeout=10)
                break
            except conn.recoverable_connection_errors:
                conn.ensure_connection(max_retries=3, interval_start=0.1)
        bodies = []
        while (message := conn.default_channel.basic_get(queue.name)) is not None:
            bodies.append(message.decode())
            message.ack()
        # what was not yet confirmed when the cut came was published again after the reconnect: it may
        # arrive twice (at-least-once), but nothing is lost
        assert set(bodies) == {"before", "after"}
        assert len(bodies) <= 4


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ((b"HTTP/1.1 400 Bad Request\r\n\r\n",), "protocol error"),
        ((HANDSHAKE[:20], 0.2), "did not finish within 3 s"),
    ],
)
def test_a_malformed_server_fails_connect_clearly(script: tuple[bytes | float, ...], expected: str) -> None:
    server = FakeServer(*script)
    try:
        with pytest.raises(ConnectionError, match=expected):
            kelp.Connection(server.url, connect_timeout=3).connect()
    finally:
        server.close()


BAD_FRAMES = [
    b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0b\xff",  # frame-end octet is not 0xCE
    b"\x09\x00\x00\x00\x00\x00\x00\xce",  # unknown frame type
    b"\x01\x00\x00\x7f\xff\xff\xff",  # a frame far bigger than frame_max
]


@pytest.mark.parametrize("bad", BAD_FRAMES)
def test_a_malformed_frame_ends_the_connection(bad: bytes) -> None:
    server = FakeServer(HANDSHAKE, 0.2, CHANNEL_OPEN_OK, 0.3, bad)
    try:
        conn = kelp.Connection(server.url, connect_timeout=3)
        conn.connect()
        with pytest.raises(ConnectionError, match="protocol error"):
            conn.drain_events(timeout=5)
        conn.close()
    finally:
        server.close()


@pytest.mark.parametrize("bad", BAD_FRAMES)
async def test_a_malformed_frame_ends_the_connection_aio(bad: bytes) -> None:
    server = FakeServer(HANDSHAKE, 0.2, CHANNEL_OPEN_OK, 0.3, bad)
    try:
        conn = kelp.aio.Connection(server.url, connect_timeout=3)
        await conn.connect()
        with pytest.raises(ConnectionError, match="protocol error"):
            await conn.drain_events(timeout=5)
        await conn.close()
    finally:
        server.close()


def test_nothing_listening_is_a_connection_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match="cannot connect"):
        kelp.Connection(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=3).connect()


async def test_bad_credentials_are_a_connection_error_aio(amqp_port: int) -> None:
    conn = kelp.aio.Connection(f"amqp://guest:wrong@127.0.0.1:{amqp_port}/", connect_timeout=5)
    with pytest.raises(ConnectionError, match=r"ACCESS_REFUSED|403"):
        await conn.connect()
