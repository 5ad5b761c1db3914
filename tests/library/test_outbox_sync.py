"""The library's half of the delivery model, with a transport that pipelines confirms (on memory://).

The real transports are proven against real brokers in tests/rabbitmq, tests/redis and tests/sqlite; here a
scripted transport shows what the library does with an outbox: Connection.flush is the barrier, a refusal
reaches the user from flush or close, and what a lost connection had not had confirmed is published again
on the next one, in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from kelp import Connection, Queue
from kelp._envelope import Envelope
from kelp.exceptions import MessageNacked, OperationalError
from kelp.transport.memory import MemoryTransport


class PipelinedMemory(MemoryTransport):
    """memory:// with confirms that arrive only at flush: publishes wait in an outbox until then, and
    envelopes whose body is b"refuse" are refused there. ``drop()`` loses the connection, outbox and all."""

    def __init__(self, url: Any, options: Any) -> None:
        super().__init__(url, options)
        self.outbox: list[Envelope] = []

    def open_channel(self) -> Any:
        channel = super().open_channel()
        transport = self

        class Channel(type(channel)):  # type: ignore[misc]
            def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
                transport.require()
                transport.outbox.extend(envelopes)
                return []

        channel.__class__ = Channel
        return channel

    def flush(self, timeout: float | None) -> None:
        self.require()
        outbox, self.outbox = self.outbox, []
        refused = [envelope for envelope in outbox if envelope.body == b"refuse"]
        channel = super().open_channel()
        channel.publish([envelope for envelope in outbox if envelope.body != b"refuse"])
        if refused:
            raise MessageNacked(f"refused {len(refused)}", 406, envelopes=refused)

    def unconfirmed(self) -> list[Envelope]:
        return list(self.outbox)

    def require(self) -> None:
        if not self.is_connected:
            raise OperationalError("connection lost")

    def drop(self) -> None:
        MemoryTransport.close(self)


def _connect(url: str) -> Connection:
    conn = Connection(url)
    conn.transport_cls = PipelinedMemory
    return conn.connect()


def _bodies(url: str, queue: str) -> list[bytes]:
    got = []
    with Connection(url) as conn:
        while (message := Queue(queue)(conn.default_channel).get()) is not None:
            got.append(message.body)
            message.ack()
    return got


def test_flush_is_the_barrier_and_names_refused_messages() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    conn = _connect(url)
    Queue("q")(conn.default_channel).declare()
    producer = conn.Producer(routing_key="q")
    for body in (b"one", b"refuse", b"two"):
        producer.publish(body)
    assert _bodies(url, "q") == []  # published, not yet confirmed
    with pytest.raises(MessageNacked) as caught:
        producer.flush()
    assert [envelope.body for envelope in caught.value.envelopes] == [b"refuse"]
    assert _bodies(url, "q") == [b"one", b"two"]
    producer.flush()  # each refusal is reported once
    conn.close()


def test_close_raises_a_refusal_it_finds_and_still_closes() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    conn = _connect(url)
    Queue("q")(conn.default_channel).declare()
    conn.Producer(routing_key="q").publish(b"refuse")
    transport = conn.transport
    assert transport is not None
    with pytest.raises(MessageNacked):
        conn.close()
    assert not transport.is_connected
    assert not conn.connected
    assert conn.transport is not transport  # the closed transport is let go


def test_unconfirmed_messages_are_published_again_after_a_reconnect() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    conn = _connect(url)
    Queue("q", durable=True)(conn.default_channel).declare()
    producer = conn.Producer(routing_key="q")
    for n in range(3):
        producer.publish(f"m{n}".encode())
    transport = conn.transport
    assert isinstance(transport, PipelinedMemory)
    transport.drop()  # the connection is lost with three messages unconfirmed
    with pytest.raises(OperationalError):
        conn.flush()

    # A retried publish reconnects: the lost outbox goes first, in order, then the new message.
    producer.publish(b"m3", retry=True, retry_policy={"interval_start": 0, "max_retries": 2})
    conn.flush()
    assert _bodies(url, "q") == [b"m0", b"m1", b"m2", b"m3"]
    conn.close()


def test_a_connection_lost_for_good_says_how_many_messages_wait() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    conn = _connect(url)
    conn.Producer(routing_key="q").publish(b"m0")
    transport = conn.transport
    assert isinstance(transport, PipelinedMemory)
    transport.drop()
    conn._discard_transport()
    with pytest.raises(OperationalError, match="1 published messages wait for a reconnect"):
        conn.flush()
    conn.close()
