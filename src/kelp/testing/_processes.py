"""Child processes for the kit's multi-process tests: a consumer that holds messages unacked until it is
killed, and a publisher. Plain sync code shared by both faces (the child always uses the sync API)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from types import TracebackType
from typing import IO, Self

__all__ = ["HOLDING_CONSUMER", "PUBLISHER", "READER", "Child"]

#: argv: url queue count. Consumes ``count`` messages of an existing queue without acking them, says
#: ``held <n>``, then waits to be killed.
HOLDING_CONSUMER = """
import sys, time
import kelp
url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
held = []
with kelp.Connection(url) as conn:
    consumer = conn.Consumer(
        [kelp.Queue(queue, no_declare=True)],
        callbacks=[lambda body, message: held.append(message)],
        prefetch_count=count,
    )
    with consumer:
        deadline = time.monotonic() + 30
        while len(held) < count and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.25)
            except TimeoutError:
                pass
        print("held", len(held), flush=True)
        time.sleep(120)
"""

#: argv: url queue count. Publishes ``count`` persistent messages 0..count-1 to an existing queue through
#: the default exchange, flushes, says ``published <n>`` and exits.
PUBLISHER = """
import sys
import kelp
url, queue, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with kelp.Connection(url) as conn:
    producer = conn.Producer()
    for n in range(count):
        producer.publish(n, routing_key=queue, delivery_mode=2)
    conn.flush(timeout=30)
print("published", count, flush=True)
"""

#: argv: url queue. Takes (and acks) every message of an existing queue that is ready now, says
#: ``read <json list of payloads>`` and exits.
READER = """
import json, sys
import kelp
url, queue = sys.argv[1], sys.argv[2]
payloads = []
with kelp.Connection(url) as conn:
    bound = kelp.Queue(queue, no_declare=True)(conn.default_channel)
    while (message := bound.get()) is not None:
        message.ack()
        payloads.append(message.payload)
print("read", json.dumps(payloads), flush=True)
"""


class Child:
    """A Python child process running ``script`` with ``args``; killed (SIGKILL) when the block ends."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def line(self, timeout: float) -> str:
        """The next line the child prints; raises AssertionError (with its stderr) if none comes in time."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if selector.select(remaining):
                    line = stdout.readline()
                    if line:
                        return line.strip()
                    break  # end of file: the child exited
        raise AssertionError(f"the child printed nothing in {timeout}s; stderr: {self._stderr()!r}")

    def kill(self) -> int:
        """SIGKILL the child (no cleanup, no goodbye to the broker) and reap it; its exit code."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        code = self.process.wait(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code

    def _stderr(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        stream: IO[str] | None = self.process.stderr
        return stream.read()[-2000:] if stream is not None else ""
