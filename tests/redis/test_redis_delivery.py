"""The delivery model on redis://, end to end with real processes and a real (cut) network:

* a publisher killed -9 right after its last publish() returned loses nothing (the script calls were
  written to the socket before publish returned);
* a proxy that cuts the connection every few hundred kB under a retried publish loop loses nothing (the
  outbox is published again on the next connection: at-least-once);
* a consumer killed -9 gives its unacked messages back within 2 s, flagged redelivered (the other
  connections notice that its Redis client is gone), not after ``liveness``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kelp_redis_kit import with_options

from kelp import Connection, Queue
from proxy_kit import Proxy

WORKER = Path(__file__).with_name("kelp_redis_worker.py")
PUBLISHER = textwrap.dedent(
    """
    import os, signal, sys
    from kelp import Connection
    with Connection(sys.argv[1]) as conn:
        producer = conn.Producer()
        for n in range(int(sys.argv[3])):
            producer.publish({"n": n, "pad": "x" * 200}, routing_key=sys.argv[2])
        os.kill(os.getpid(), signal.SIGKILL)  # right after the last publish returned: no flush, no close
    """
)

PUBLISHER_AIO = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import kelp.aio

    async def main():
        async with kelp.aio.Connection(sys.argv[1]) as conn:
            producer = conn.Producer()
            for n in range(int(sys.argv[3])):
                await producer.publish({"n": n, "pad": "x" * 200}, routing_key=sys.argv[2])
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


def _fresh(redis_base: str) -> str:
    """A URL on an isolated broker (its own prefix) with the default liveness (10 s)."""
    return with_options(redis_base, prefix=uuid.uuid4().hex[:12])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _drain_all(conn: Connection, queue: str, expected: int, bound: float) -> dict[int, int]:
    """Consume until ``expected`` distinct messages arrived (or ``bound`` seconds); n -> times seen."""
    seen: dict[int, int] = {}

    def on_message(body, message):
        seen[body["n"]] = seen.get(body["n"], 0) + 1
        message.ack()

    deadline = time.monotonic() + bound
    with conn.Consumer([Queue(queue)], callbacks=[on_message], prefetch_count=500):
        while len(seen) < expected and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.25)
            except TimeoutError:
                pass
    return seen


@pytest.mark.parametrize("script", [PUBLISHER, PUBLISHER_AIO], ids=["sync", "aio"])
def test_a_publisher_killed_right_after_its_last_publish_loses_nothing(redis_base, script):
    url, total = _fresh(redis_base), 3000
    with Connection(url) as conn:
        bound = Queue("durable-jobs", durable=True)(conn.default_channel)
        bound.declare()
        publisher = subprocess.run(
            [sys.executable, "-c", script, url, "durable-jobs", str(total)], env=_env(), timeout=120
        )
        assert publisher.returncode == -signal.SIGKILL
        # What the dead publisher wrote may still be in the kernel's buffers and Redis's: it is all
        # stored as Redis reads on (the publisher is owed no reply, so Redis reads its socket to the end).
        deadline = time.monotonic() + 30
        while (
            count := bound.queue_declare(passive=True).message_count
        ) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count == total


def test_a_connection_cut_every_few_hundred_kb_loses_no_retried_publish(redis_base):
    url, total = _fresh(redis_base), 3000
    parts = urlsplit(url)
    proxy = Proxy(parts.port or 6379, cut_every=300_000)
    proxied = url.replace(f":{parts.port}/", f":{proxy.port}/", 1)
    policy = {"max_retries": 100, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}
    try:
        with Connection(url) as reader:
            Queue("cut", durable=True)(reader.default_channel).declare()
            with Connection(proxied) as publisher:
                producer = publisher.Producer()
                for n in range(total):
                    producer.publish(
                        {"n": n, "pad": "x" * 200}, routing_key="cut", retry=True, retry_policy=policy
                    )
                publisher.ensure(publisher, publisher.flush, **policy)()
            assert proxy.cuts >= 3, "the proxy should have cut the connection several times"
            seen = _drain_all(reader, "cut", total, bound=30)
        missing = sorted(set(range(total)) - set(seen))
        assert missing == [], f"{len(missing)} messages lost, e.g. {missing[:10]}"
    finally:
        proxy.close()


def test_a_consumer_killed_gives_its_messages_back_within_2_seconds_flagged(redis_base):
    url, total, prefetch = _fresh(redis_base), 30, 10
    with Connection(url) as conn:
        Queue("work")(conn.default_channel).declare()
        producer = conn.Producer()
        for n in range(total):
            producer.publish(n, routing_key="work")
        conn.flush()
        worker = subprocess.Popen(
            [sys.executable, str(WORKER), url, "work", str(prefetch), "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().startswith("acked ")
            line = worker.stdout.readline()
            assert line.startswith("holding "), f"worker said {line!r}"
            holding = json.loads(line[len("holding ") :])
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
            killed = time.monotonic()
            if worker.stdout is not None:
                worker.stdout.close()
        assert len(holding) == prefetch

        back: dict[int, float] = {}
        flagged: dict[int, bool] = {}

        def on_message(body, message):
            back[body] = time.monotonic() - killed
            flagged[body] = message.redelivered
            message.ack()

        with conn.Consumer([Queue("work")], callbacks=[on_message], prefetch_count=100):
            deadline = killed + 10  # liveness: what it took before
            while not set(holding) <= set(back) and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:
                    pass
        assert set(holding) <= set(back), "the killed consumer's messages never came back"
        slowest = max(back[n] for n in holding)
        assert slowest < 2.0, f"the killed consumer's messages came back after {slowest:.2f}s"
        assert all(flagged[n] for n in holding)
        assert not any(flagged[n] for n in back if n not in holding)
