"""Several processes on one broker: a message published by one process reaches another, the unacked
messages of a consumer process killed with SIGKILL come back flagged ``redelivered``, and persistent
messages on a durable queue survive a restart of the broker."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Queue
from kelp.testing import Capabilities
from kelp.testing._processes import HOLDING_CONSUMER, PUBLISHER, READER, Child

from .helpers import WAIT, Names, declared, drain_for, fetch, take_all

#: How long a child process may take to start, connect and do its work.
CHILD_WAIT = 30.0


@pytest.mark.kelp_needs("multiprocess")
async def test_messages_published_by_another_process_arrive(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        with Child(PUBLISHER, broker_url, bq.name, "5") as publisher:
            assert publisher.line(CHILD_WAIT) == "published 5"
        assert [message.payload for message in await fetch(bq, 5)] == [0, 1, 2, 3, 4]


@pytest.mark.kelp_needs("multiprocess", "dead_consumer")
async def test_a_killed_consumer_process_releases_its_unacked_messages(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for n in range(3):
            await producer.publish(n, routing_key=bq.name, delivery_mode=2)
        await conn.flush(timeout=WAIT)
        with Child(HOLDING_CONSUMER, broker_url, bq.name, "3") as consumer:
            assert consumer.line(CHILD_WAIT) == "held 3"
            assert await bq.get() is None  # all three are out, unacked, in the other process
            consumer.kill()
        back = await fetch(bq, 3, timeout=capabilities.dead_consumer_within)
        assert sorted(message.payload for message in back) == [0, 1, 2]
        assert all(message.redelivered for message in back)
        await drain_for(conn)
        assert await bq.get() is None


@pytest.mark.kelp_needs("restart")
async def test_persistent_messages_on_a_durable_queue_survive_a_restart(
    broker_url: str, names: Names, capabilities: Capabilities
) -> None:
    queue = Queue(names("q"), durable=True)
    async with Connection(broker_url) as conn:
        bq = await declared(conn, queue)
        producer = conn.Producer()
        for n in range(3):
            await producer.publish({"n": n}, routing_key=bq.name, delivery_mode=2)
        await conn.flush(timeout=WAIT)
    assert capabilities.restart is not None
    capabilities.restart()
    if capabilities.supports("multiprocess"):
        # read by a fresh process: what survived is in the broker, not in this process's memory
        with Child(READER, broker_url, queue.name) as reader:
            assert reader.line(CHILD_WAIT) == 'read [{"n": 0}, {"n": 1}, {"n": 2}]'
        return
    async with Connection(broker_url) as conn:
        bq = queue(conn.default_channel)
        assert await take_all(bq) == [{"n": 0}, {"n": 1}, {"n": 2}]
