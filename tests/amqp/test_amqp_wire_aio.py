"""The asyncio AMQP driver (kelp.aio._amqp_io) and the amqp transport against a scripted server
(fake_broker): the same wire scenarios as test_amqp_wire_sync.py, on the event loop. The server runs in
its own thread; whatever may block on it (sending in pieces, waiting for frames) goes through
``asyncio.to_thread`` so the loop keeps reading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from amqp_kit import content, method
from fake_broker import HEARTBEAT, FakeBroker, Published

from kelp.aio import Connection, Exchange, Message, Queue
from kelp.exceptions import ConnectionError, MessageNacked, OperationalError

pytestmark = pytest.mark.timeout(60)

CLOSE_FORCED = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as broker:
        yield broker


async def _drain_error(conn: Connection, within: float) -> BaseException:
    """Drain until ``drain_events`` raises something other than a timeout; that exception."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            await conn.drain_events(timeout=0.5)
        except TimeoutError:
            continue
        except Exception as exc:
            return exc
    raise AssertionError(f"drain_events raised nothing within {within} s")


async def _wait_method(broker: FakeBroker, name: str, count: int = 1) -> list[tuple[int, tuple[object, ...]]]:
    return await asyncio.to_thread(broker.wait_method, name, count)


async def test_handshake_and_the_default_channel(broker: FakeBroker) -> None:
    async with Connection(broker.url()) as conn:
        assert conn.connected
        [(_, start_ok)] = await _wait_method(broker, "connection.start-ok")
        assert start_ok[1:3] == ("PLAIN", b"\x00guest\x00guest")
        [(_, tune_ok)] = await _wait_method(broker, "connection.tune-ok")
        assert tune_ok == (2047, 131072, 0)
        [(_, open_args)] = await _wait_method(broker, "connection.open")
        assert open_args[0] == "/"
        await _wait_method(broker, "channel.open")
    [(_, close_args)] = await _wait_method(broker, "connection.close")
    assert close_args[0] == 200


async def test_heartbeats_are_sent_and_a_silent_server_is_declared_dead() -> None:
    with FakeBroker(heartbeat=1) as broker:
        async with Connection(broker.url(heartbeat=1)) as conn:
            started = time.monotonic()
            error = await _drain_error(conn, 10)  # the server never sends a byte after the handshake
            assert isinstance(error, ConnectionError)
            assert "heartbeat" in str(error)
            assert 1.5 <= time.monotonic() - started < 5
            assert broker.methods("heartbeat"), "the client sent no heartbeat while idle"


async def test_a_server_that_sends_heartbeats_keeps_the_connection() -> None:
    with FakeBroker(heartbeat=1) as broker:
        async with Connection(broker.url(heartbeat=1)) as conn:
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                await asyncio.to_thread(broker.send, HEARTBEAT)
                with pytest.raises(TimeoutError):
                    await conn.drain_events(timeout=0.4)
            assert conn.connected
            assert len(broker.methods("heartbeat")) >= 2


async def test_connection_close_from_the_server_fails_calls_with_its_reason(broker: FakeBroker) -> None:
    async with Connection(broker.url()) as conn:
        channel = conn.default_channel
        await asyncio.to_thread(broker.send, method(0, "connection.close", 320, CLOSE_FORCED, 0, 0))
        with pytest.raises(ConnectionError, match="320") as raised:
            await conn.drain_events(timeout=5)
        assert CLOSE_FORCED in str(raised.value)
        await _wait_method(broker, "connection.close-ok")
        with pytest.raises(ConnectionError, match="320"):
            await channel.basic_publish(channel.prepare_message(b"x"), "", "q")


async def test_a_delivery_cut_into_single_bytes_is_assembled(broker: FakeBroker) -> None:
    got: list[Message] = []
    async with Connection(broker.url()) as conn:
        consumer = conn.Consumer([Queue("q")], callbacks=[lambda body, message: got.append(message)])
        await consumer.consume()
        [(channel, consume)] = await _wait_method(broker, "basic.consume")
        body = "é" * 300
        frames = broker.deliver(channel, str(consume[2] or "ctag-1"), 1, body.encode())
        sending = asyncio.ensure_future(asyncio.to_thread(broker.send_in_pieces, frames))
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            try:
                await conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
        await sending
        [message] = got
        assert message.body == body.encode()
        await message.ack()
        with pytest.raises(TimeoutError):
            await conn.drain_events(timeout=0.2)  # acks are coalesced and sent when the client next waits
        [(_, ack)] = await _wait_method(broker, "basic.ack")
        assert ack[0] == 1


async def test_a_malformed_frame_is_a_clear_connection_error(broker: FakeBroker) -> None:
    async with Connection(broker.url()) as conn:
        channel = conn.default_channel
        frame = bytearray(method(1, "basic.ack", 1, False))
        frame[-1] = 0x00  # the frame-end octet must be 0xCE
        await asyncio.to_thread(broker.send, bytes(frame))
        with pytest.raises(ConnectionError, match="frame end") as raised:
            await conn.drain_events(timeout=5)
        assert "protocol error" in str(raised.value)
        with pytest.raises(ConnectionError, match="frame end"):
            await channel.basic_publish(channel.prepare_message(b"after"), "", "q")


async def test_confirms_out_of_order_each_settle_their_own_message() -> None:
    with FakeBroker(auto_confirm=False) as broker:
        async with Connection(broker.url()) as conn:
            producer = conn.Producer()
            for n in range(4):
                await producer.publish(f"m{n}", routing_key="q")
            published = await asyncio.to_thread(broker.wait_published, 4)
            assert [message.tag for message in published] == [1, 2, 3, 4]
            channel = published[0].channel
            await asyncio.to_thread(broker.ack, channel, 3)
            await asyncio.to_thread(broker.nack, channel, 1)
            await asyncio.to_thread(broker.ack, channel, 4)
            await asyncio.to_thread(broker.ack, channel, 2)
            with pytest.raises(MessageNacked) as raised:
                await conn.flush(timeout=5)
            assert [envelope.body for envelope in raised.value.envelopes] == [b"m0"]
            await conn.flush(timeout=5)


async def test_a_multiple_ack_confirms_everything_up_to_its_tag() -> None:
    with FakeBroker(auto_confirm=False) as broker:
        async with Connection(broker.url()) as conn:
            producer = conn.Producer()
            for n in range(3):
                await producer.publish(n, routing_key="q")
            published = await asyncio.to_thread(broker.wait_published, 3)
            with pytest.raises(TimeoutError):
                await conn.flush(timeout=0.3)
            await asyncio.to_thread(broker.ack, published[0].channel, 3, True)
            await conn.flush(timeout=5)


def _return_unroutable(message: Published) -> bytes:
    return content(
        message.channel,
        "basic.return",
        (312, "NO_ROUTE", message.exchange, message.routing_key),
        message.body,
    ) + method(message.channel, "basic.ack", message.tag, False)


async def test_basic_return_reaches_on_return_with_the_reply_code(broker: FakeBroker) -> None:
    broker.on_publish = _return_unroutable
    returned: list[tuple[BaseException, str, str, Message]] = []
    async with Connection(broker.url()) as conn:
        producer = conn.Producer(on_return=lambda *args: returned.append(args))
        await producer.publish(
            "lost", exchange=Exchange("ex", no_declare=True), routing_key="nowhere", mandatory=True
        )
        [(exception, exchange, routing_key, returned_message)] = returned
        assert getattr(exception, "reply_code", None) == 312
        assert (exchange, routing_key) == ("ex", "nowhere")
        assert returned_message.payload == "lost"


async def test_publish_waits_while_blocked_and_goes_on_when_unblocked(broker: FakeBroker) -> None:
    async with Connection(broker.url()) as conn:
        producer = conn.Producer()
        await asyncio.to_thread(broker.send, method(0, "connection.blocked", "low on memory"))
        with pytest.raises(TimeoutError):
            await conn.drain_events(timeout=0.2)  # the loop reads the alarm
        publishing = asyncio.ensure_future(producer.publish("waited", routing_key="q"))
        await asyncio.sleep(0.5)
        assert not publishing.done()
        assert broker.published == []  # nothing was written while blocked
        await asyncio.to_thread(broker.send, method(0, "connection.unblocked"))
        await asyncio.wait_for(publishing, 5)
        [message] = await asyncio.to_thread(broker.wait_published, 1)
        assert message.body == b"waited"


async def test_a_publish_blocked_too_long_gives_up(broker: FakeBroker) -> None:
    async with Connection(broker.url(blocked_timeout=0.5)) as conn:
        producer = conn.Producer()
        await asyncio.to_thread(broker.send, method(0, "connection.blocked", "low on disk"))
        with pytest.raises(TimeoutError):
            await conn.drain_events(timeout=0.2)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="low on disk"):
            await producer.publish("never", routing_key="q")
        assert time.monotonic() - started < 3


async def test_a_socket_cut_in_the_middle_of_a_frame_is_a_lost_connection(broker: FakeBroker) -> None:
    got: list[Message] = []
    async with Connection(broker.url()) as conn:
        consumer = conn.Consumer([Queue("q")], callbacks=[lambda body, message: got.append(message)])
        await consumer.consume()
        [(channel, _)] = await _wait_method(broker, "basic.consume")
        frames = broker.deliver(channel, "ctag-1", 1, b"x" * 100)
        await asyncio.to_thread(broker.send, frames[: len(frames) // 2])
        await asyncio.sleep(0.1)
        await asyncio.to_thread(broker.cut)
        error = await _drain_error(conn, 5)
        assert isinstance(error, ConnectionError)
        assert "closed the connection" in str(error)
        assert got == []
