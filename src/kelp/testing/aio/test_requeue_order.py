"""Requeued messages go back to their place in the queue, as on RabbitMQ: ahead of the messages published
after them and, among themselves, in their original order, whatever order they were requeued in."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.aio import Connection, Queue

from .helpers import Names, count_becomes, declared, fetch


@pytest.mark.parametrize("max_priority", [None, 5])
@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
async def test_requeued_messages_return_to_their_place(
    broker_url: str, names: Names, max_priority: Any, order: Any
) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q"), max_priority=max_priority))
        producer = conn.Producer()
        for n in range(4):
            await producer.publish(n, routing_key=bq.name, priority=2)
        taken = await fetch(bq, 3, ack=False)
        for index in order:
            await taken[index].requeue()
        assert await count_becomes(bq, 4)
        again = await fetch(bq, 4)
        assert [(m.payload, m.delivery_info["redelivered"]) for m in again] == [
            (0, True),
            (1, True),
            (2, True),
            (3, False),
        ]
