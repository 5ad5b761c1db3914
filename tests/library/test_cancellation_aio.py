"""A cancelled ``drain_events`` in kelp.aio loses nothing: every message still arrives, exactly once,
without waiting for the connection to close (which would redeliver it flagged redelivered)."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path

import pytest

from kelp.aio import Connection, Queue


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return f"memory://{uuid.uuid4().hex[:8]}"
    return f"sqlite:///{tmp_path}/cancel.db"


async def test_cancelled_drains_lose_no_message(url: str) -> None:
    rng = random.Random(7)
    got: list[tuple[int, bool]] = []

    async def handle(body: int, message: object) -> None:
        got.append((body, message.redelivered))  # type: ignore[attr-defined]
        await message.ack()  # type: ignore[attr-defined]

    async with Connection(url) as conn:
        queue = Queue(f"q-{uuid.uuid4().hex[:8]}")
        producer = conn.Producer()
        async with conn.Consumer([queue], callbacks=[handle], prefetch_count=3):
            for n in range(30):
                await producer.publish(n, routing_key=queue.name, declare=[queue])
                task = asyncio.create_task(conn.drain_events(timeout=1))
                await asyncio.sleep(rng.choice([0, 0, 0.0005, 0.001, 0.003]))
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, TimeoutError):
                    pass
            deadline = asyncio.get_running_loop().time() + 10
            while len(got) < 30 and asyncio.get_running_loop().time() < deadline:
                try:
                    await conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    assert sorted(body for body, _ in got) == list(range(30))
    assert not any(redelivered for _, redelivered in got)
