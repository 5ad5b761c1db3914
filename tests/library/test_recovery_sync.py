"""The sync face: after a reconnect, declarations and consumers come back by themselves.
(The same scenario as test_recovery_aio.py.)"""

from __future__ import annotations

import uuid

import pytest

from kelp import Connection, Exchange, Message, Queue
from kelp.exceptions import OperationalError


def _drain_until(conn: Connection, done: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if done():  # type: ignore[operator]
            return
        try:
            conn.drain_events(timeout=0.05)
        except TimeoutError:
            pass


def test_consumers_and_declarations_come_back_after_a_reconnect() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    exchange = Exchange("jobs", "direct")
    queue = Queue("work", exchange, routing_key="job")
    got: list[str] = []

    def handle(body: str, message: Message) -> None:
        got.append(body)
        message.ack()

    with Connection(url) as conn:
        consumer = conn.Consumer([queue], callbacks=[handle])
        consumer.consume()
        conn.Producer().publish("one", exchange=exchange, routing_key="job")
        _drain_until(conn, lambda: got == ["one"])

        assert conn.transport is not None
        conn.transport.close()  # the broker connection is gone under the library's feet
        with pytest.raises(OperationalError):
            conn.drain_events(timeout=0.1)
        with Connection(url) as other:  # meanwhile the topology is lost too
            other.default_channel.queue_delete("work")
            other.default_channel.exchange_delete("jobs")

        conn.ensure_connection(max_retries=1, interval_start=0)

        with Connection(url) as other:
            other.Producer(auto_declare=False).publish("two", exchange="jobs", routing_key="job")
        _drain_until(conn, lambda: got == ["one", "two"])
        assert got == ["one", "two"]
        assert consumer.active_queues == ["work"]
