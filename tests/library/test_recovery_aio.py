"""After a lost connection is re-established, the connection declares again what it had declared and
restarts its consumers: consumption resumes without the application rebuilding anything."""

from __future__ import annotations

import uuid

import pytest

from kelp.aio import Connection, Exchange, Message, Queue
from kelp.exceptions import OperationalError


async def _drain_until(conn: Connection, done: object, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if done():  # type: ignore[operator]
            return
        try:
            await conn.drain_events(timeout=0.05)
        except TimeoutError:
            pass


async def test_consumers_and_declarations_come_back_after_a_reconnect() -> None:
    url = f"memory://{uuid.uuid4().hex[:8]}"
    exchange = Exchange("jobs", "direct")
    queue = Queue("work", exchange, routing_key="job")
    got: list[str] = []

    async def handle(body: str, message: Message) -> None:
        got.append(body)
        await message.ack()

    async with Connection(url) as conn:
        consumer = conn.Consumer([queue], callbacks=[handle])
        await consumer.consume()
        await conn.Producer().publish("one", exchange=exchange, routing_key="job")
        await _drain_until(conn, lambda: got == ["one"])

        assert conn.transport is not None
        await conn.transport.close()  # the broker connection is gone under the library's feet
        with pytest.raises(OperationalError):
            await conn.drain_events(timeout=0.1)
        async with Connection(url) as other:  # meanwhile the topology is lost too
            await other.default_channel.queue_delete("work")
            await other.default_channel.exchange_delete("jobs")

        await conn.ensure_connection(max_retries=1, interval_start=0)

        async with Connection(url) as other:
            await other.Producer(auto_declare=False).publish("two", exchange="jobs", routing_key="job")
        await _drain_until(conn, lambda: got == ["one", "two"])
        assert got == ["one", "two"]
        assert consumer.active_queues == ["work"]
