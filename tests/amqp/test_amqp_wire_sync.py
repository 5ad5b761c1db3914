"""The sync AMQP driver (kelp._amqp_io) and the amqp transport against a scripted server (fake_broker):
what reaches the wire and what the library makes of what the server sends, with no RabbitMQ."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from amqp_kit import content, method
from fake_broker import HEARTBEAT, FakeBroker, Published

import kelp
from kelp import Exchange, Queue
from kelp.exceptions import ConnectionError, MessageNacked, OperationalError

pytestmark = pytest.mark.timeout(60)

CLOSE_FORCED = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as broker:
        yield broker


def _consume(conn: kelp.Connection, got: list[kelp.Message]) -> kelp.Consumer:
    consumer = conn.Consumer([Queue("q")], callbacks=[lambda body, message: got.append(message)])
    consumer.consume()
    return consumer


def _drain_error(conn: kelp.Connection, within: float) -> BaseException:
    """Drain until ``drain_events`` raises something other than a timeout; that exception."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            continue
        except Exception as exc:
            return exc
    raise AssertionError(f"drain_events raised nothing within {within} s")


def test_handshake_and_the_default_channel(broker: FakeBroker) -> None:
    with kelp.Connection(broker.url()) as conn:
        assert conn.connected
        [(_, start_ok)] = broker.wait_method("connection.start-ok")
        assert start_ok[1] == "PLAIN"
        assert start_ok[2] == b"\x00guest\x00guest"
        assert start_ok[0]["product"] == "kelp"
        [(_, tune_ok)] = broker.wait_method("connection.tune-ok")
        assert tune_ok == (2047, 131072, 0)
        [(_, open_args)] = broker.wait_method("connection.open")
        assert open_args[0] == "/"
        [(channel, _)] = broker.wait_method("channel.open")
        assert channel >= 1
    [(_, close_args)] = broker.wait_method("connection.close")
    assert close_args[0] == 200


def test_heartbeats_are_sent_and_a_silent_server_is_declared_dead() -> None:
    with FakeBroker(heartbeat=1) as broker, kelp.Connection(broker.url(heartbeat=1)) as conn:
        [(_, tune_ok)] = broker.wait_method("connection.tune-ok")
        assert tune_ok[2] == 1
        started = time.monotonic()
        # The server never sends a byte after the handshake: after two intervals the client gives up.
        error = _drain_error(conn, 10)
        assert isinstance(error, ConnectionError)
        assert "heartbeat" in str(error)
        assert 1.5 <= time.monotonic() - started < 5
        assert broker.methods("heartbeat"), "the client sent no heartbeat while idle"


def test_a_server_that_sends_heartbeats_keeps_the_connection() -> None:
    with FakeBroker(heartbeat=1) as broker, kelp.Connection(broker.url(heartbeat=1)) as conn:
        broker.wait_method("channel.open")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(0.4):
                broker.send(HEARTBEAT)

        beater = threading.Thread(target=beat)
        beater.start()
        try:
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                with pytest.raises(TimeoutError):
                    conn.drain_events(timeout=0.5)
            assert conn.connected
            assert len(broker.methods("heartbeat")) >= 2
        finally:
            stop.set()
            beater.join()


def test_connection_close_from_the_server_fails_calls_with_its_reason(broker: FakeBroker) -> None:
    with kelp.Connection(broker.url()) as conn:
        broker.wait_method("channel.open")
        channel = conn.default_channel
        broker.send(method(0, "connection.close", 320, CLOSE_FORCED, 0, 0))
        with pytest.raises(ConnectionError, match="320") as raised:
            conn.drain_events(timeout=5)
        assert CLOSE_FORCED in str(raised.value)
        broker.wait_method("connection.close-ok")
        with pytest.raises(ConnectionError, match="320"):  # the channel is gone with its connection
            channel.basic_publish(channel.prepare_message(b"x"), "", "q")


def test_a_delivery_cut_into_single_bytes_is_assembled(broker: FakeBroker) -> None:
    got: list[kelp.Message] = []
    with kelp.Connection(broker.url()) as conn:
        _consume(conn, got)
        [(channel, consume)] = broker.wait_method("basic.consume")
        body = "é" * 300
        frames = broker.deliver(channel, consume[2] or "ctag-1", 1, body.encode())
        sender = threading.Thread(target=broker.send_in_pieces, args=(frames,))
        sender.start()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
        sender.join()
        [message] = got
        assert message.body == body.encode()
        assert message.delivery_info["routing_key"] == "q"
        message.ack()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.2)  # acks are coalesced and sent when the client next waits
        [(_, ack)] = broker.wait_method("basic.ack")
        assert ack[0] == 1


def test_a_malformed_frame_is_a_clear_connection_error(broker: FakeBroker) -> None:
    with kelp.Connection(broker.url()) as conn:
        broker.wait_method("channel.open")
        channel = conn.default_channel
        frame = bytearray(method(1, "basic.ack", 1, False))
        frame[-1] = 0x00  # the frame-end octet must be 0xCE
        broker.send(bytes(frame))
        with pytest.raises(ConnectionError, match="frame end") as raised:
            conn.drain_events(timeout=5)
        assert "protocol error" in str(raised.value)
        with pytest.raises(ConnectionError, match="frame end"):  # every later call raises it again
            channel.basic_publish(channel.prepare_message(b"after"), "", "q")


def test_confirms_out_of_order_each_settle_their_own_message() -> None:
    with FakeBroker(auto_confirm=False) as broker, kelp.Connection(broker.url()) as conn:
        producer = conn.Producer()
        for n in range(4):
            producer.publish(f"m{n}", routing_key="q")
        published = broker.wait_published(4)
        assert [message.tag for message in published] == [1, 2, 3, 4]
        channel = published[0].channel
        broker.ack(channel, 3)
        broker.nack(channel, 1)
        broker.ack(channel, 4)
        broker.ack(channel, 2)
        with pytest.raises(MessageNacked) as raised:
            conn.flush(timeout=5)
        assert [envelope.body for envelope in raised.value.envelopes] == [b"m0"]
        conn.flush(timeout=5)  # every other message was confirmed; the refusal was reported once


def test_a_multiple_ack_confirms_everything_up_to_its_tag() -> None:
    with FakeBroker(auto_confirm=False) as broker, kelp.Connection(broker.url()) as conn:
        producer = conn.Producer()
        for n in range(3):
            producer.publish(n, routing_key="q")
        published = broker.wait_published(3)
        with pytest.raises(TimeoutError):
            conn.flush(timeout=0.3)  # nothing confirmed yet
        broker.ack(published[0].channel, 3, multiple=True)
        conn.flush(timeout=5)


def _return_unroutable(message: Published) -> bytes:
    """What RabbitMQ sends for a mandatory message no queue takes: basic.return, then basic.ack."""
    return content(
        message.channel,
        "basic.return",
        (312, "NO_ROUTE", message.exchange, message.routing_key),
        message.body,
    ) + method(message.channel, "basic.ack", message.tag, False)


def test_basic_return_reaches_on_return_with_the_reply_code(broker: FakeBroker) -> None:
    broker.on_publish = _return_unroutable
    returned: list[tuple[BaseException, str, str, kelp.Message]] = []
    with kelp.Connection(broker.url()) as conn:
        producer = conn.Producer(on_return=lambda *args: returned.append(args))
        producer.publish(
            "lost", exchange=Exchange("ex", no_declare=True), routing_key="nowhere", mandatory=True
        )
        [message] = broker.wait_published(1)
        assert message.mandatory
        # a mandatory publish waits for its confirm, so the return that precedes it came with it
        [(exception, exchange, routing_key, returned_message)] = returned
        assert getattr(exception, "reply_code", None) == 312
        assert (exchange, routing_key) == ("ex", "nowhere")
        assert returned_message.payload == "lost"


def test_publish_waits_while_blocked_and_goes_on_when_unblocked(broker: FakeBroker) -> None:
    with kelp.Connection(broker.url()) as conn:
        producer = conn.Producer()
        broker.wait_method("channel.open")
        broker.send(method(0, "connection.blocked", "low on memory"))
        time.sleep(0.2)  # the client has read it by now (its reader thread is idle)
        done = threading.Event()

        def publish() -> None:
            producer.publish("waited", routing_key="q")
            done.set()

        publisher = threading.Thread(target=publish)
        publisher.start()
        assert not done.wait(0.5)
        assert broker.published == []  # nothing was written while blocked
        broker.send(method(0, "connection.unblocked"))
        assert done.wait(5)
        publisher.join()
        [message] = broker.wait_published(1)
        assert message.body == b"waited"


def test_a_publish_blocked_too_long_gives_up(broker: FakeBroker) -> None:
    with kelp.Connection(broker.url(blocked_timeout=0.5)) as conn:
        broker.wait_method("channel.open")
        broker.send(method(0, "connection.blocked", "low on disk"))
        time.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="low on disk"):
            conn.Producer().publish("never", routing_key="q")
        assert time.monotonic() - started < 3


def test_a_socket_cut_in_the_middle_of_a_frame_is_a_lost_connection(broker: FakeBroker) -> None:
    got: list[kelp.Message] = []
    with kelp.Connection(broker.url()) as conn:
        _consume(conn, got)
        [(channel, _)] = broker.wait_method("basic.consume")
        frames = broker.deliver(channel, "ctag-1", 1, b"x" * 100)
        broker.send(frames[: len(frames) // 2])
        time.sleep(0.1)
        broker.cut()
        error = _drain_error(conn, 5)
        assert isinstance(error, ConnectionError)
        assert "closed the connection" in str(error)
        assert got == []


def test_the_reader_thread_reads_a_publishers_pipelined_confirms_in_batches(broker: FakeBroker) -> None:
    """While a thread publishes (transient, confirms pipelined), the reader thread picks the confirms up
    every few milliseconds in one read, not one wake-up per confirm (which costs both threads the GIL)."""
    with kelp.Connection(broker.url()) as conn:
        producer = conn.Producer()
        producer.publish("first", routing_key="q", delivery_mode=1)
        conn.flush(timeout=5)
        driver = conn.connection._driver
        reader = driver._thread
        read_once = driver._read_once
        reads: list[float] = []

        def counted(selector: Any, wait: float | None) -> None:
            if threading.current_thread() is reader:
                reads.append(time.monotonic())
            read_once(selector, wait)

        driver._read_once = counted
        started = time.monotonic()
        for n in range(100):
            producer.publish(n, routing_key="q", delivery_mode=1)
            time.sleep(0.002)
        broker.wait_published(101)
        time.sleep(0.1)  # the last confirms are read by the reader thread, not by flush
        elapsed = time.monotonic() - started
        assert not conn.connection.unconfirmed()
        conn.flush(timeout=5)
    # at most one read per 20 ms (about 20 in 0.4 s); one per confirm is about 100
    assert 1 <= len(reads) <= elapsed / 0.02 + 5, (len(reads), elapsed)
