"""What the cross-process tests share: process B, and process A's helpers (the fixtures that choose the
transports are in ``conftest.py``).

Process B is a short ``python -c`` run of :data:`B_SCRIPT` that applies a list of channel operations and
exits (its changes are committed before this process goes on), or holds its connection open until told
to go on or to end (exclusive queues, messages it took, acting while this process waits). Every scenario
runs on each transport named by ``KELP_TEST_TRANSPORTS`` among sqlite, redis, postgres and amqp; the
expected outcomes are RabbitMQ's (the amqp run checks them against the real broker). Waits are bounded
polls, never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import kelp
from kelp.exceptions import (
    ConsumerCancelled,
    KelpError,
    MessageNacked,
    NotFound,
    ResourceLocked,
)

WAIT = 5.0

#: Process B: ``python -c B_SCRIPT url ops``; ``ops`` is a JSON list of ``[channel method, kwargs]``,
#: each called in turn on one channel. Prints one JSON line: what each call returned (counts), and for
#: ``["hold", {}]`` prints that line at once and keeps its connection open until stdin closes;
#: ``["go", {}]`` prints it and waits for a line on stdin before the next op.
#: ``["get", {"queue": q}]`` takes a message without acking it (it goes back when B's connection ends);
#: ``["consume", {"queue": q}]`` starts a consumer (cancelled when B's connection ends); ``["reject",
#: {"requeue": r}]`` rejects the message the last get took; ``["publish", {...}]`` publishes (the
#: arguments of ``Producer.publish``). A call refused returns the name of the exception raised.
B_SCRIPT = """
import json, sys, kelp
from kelp.exceptions import KelpError
url, ops = sys.argv[1], json.loads(sys.argv[2])
out, held = [], []
with kelp.Connection(url) as conn:
    channel = conn.channel()
    for method, kwargs in ops:
        if method == "hold":
            print(json.dumps(out), flush=True)
            sys.stdin.read()
            continue
        if method == "go":
            print(json.dumps(out), flush=True)
            sys.stdin.readline()
            continue
        if method == "get":
            message = kelp.Queue(kwargs["queue"])(channel).get()
            held.append(message)
            out.append(None if message is None else message.payload)
            continue
        if method == "publish":
            conn.Producer(channel).publish(**kwargs)
            out.append(None)
            continue
        if method == "reject":
            held[-1].reject(requeue=kwargs.get("requeue", False))
            out.append(None)
            continue
        if method == "consume":
            held.append(kelp.Consumer(channel, [kelp.Queue(kwargs["queue"])], auto_declare=False))
            held[-1].consume()
            out.append(None)
            continue
        try:
            result = getattr(channel, method)(**kwargs)
        except KelpError as exc:
            out.append(type(exc).__name__)
            channel = conn.channel()  # a refusal closes the channel on RabbitMQ
            continue
        out.append(result if isinstance(result, int) else getattr(result, "message_count", None))
print(json.dumps(out), flush=True)
"""


# --- process B ----------------------------------------------------------------------------------------


def queue_declare(name: str, arguments: dict[str, Any] | None = None, durable: bool = True) -> list[Any]:
    return [
        "queue_declare",
        {"queue": name, "durable": durable, "auto_delete": False, "arguments": arguments or None},
    ]


def exchange_declare(name: str, type_: str, arguments: dict[str, Any] | None = None) -> list[Any]:
    return [
        "exchange_declare",
        {
            "exchange": name,
            "type": type_,
            "durable": True,
            "auto_delete": False,
            "arguments": arguments or None,
        },
    ]


def op(method: str, **kwargs: Any) -> list[Any]:
    return [method, kwargs]


def run_b(url: str, *ops: list[Any]) -> list[Any]:
    """Run process B to its end: its changes are committed when this returns. Returns what its calls
    returned."""
    done = subprocess.run(
        [sys.executable, "-c", B_SCRIPT, url, json.dumps(ops)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout.splitlines()[-1])
    return result


class Held:
    """Process B holding its connection open (after its ops ran) until :meth:`release` or :meth:`kill`."""

    def __init__(self, url: str, *ops: list[Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", B_SCRIPT, url, json.dumps([*ops, op("hold")])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(30)
            assert self.process.stderr is not None
            raise AssertionError(f"process B failed: {self.process.stderr.read()}")
        self.result: list[Any] = json.loads(line)

    def go(self) -> None:
        """Let B past its ``go`` op (without waiting for it: it acts while this process goes on)."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def release(self) -> None:
        """B closes its connection cleanly and exits."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(30) == 0

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# --- process A's helpers ------------------------------------------------------------------------------


def declare_queue(conn: kelp.Connection, name: str, **arguments: Any) -> None:
    conn.channel().queue_declare(name, durable=True, auto_delete=False, arguments=arguments or None)


def contents(conn: kelp.Connection, name: str) -> list[Any]:
    """The payloads ready in the queue now, taken (no_ack) on a fresh channel."""
    queue = kelp.Queue(name)(conn.channel())
    got = []
    while (message := queue.get(no_ack=True)) is not None:
        got.append(message.payload)
    return got


def wait_for(conn: kelp.Connection, name: str, n: int) -> list[Any]:
    """At least ``n`` messages taken (no_ack) from the queue within WAIT (RabbitMQ dead-letters
    asynchronously), then whatever else is ready."""
    queue = kelp.Queue(name)(conn.channel())
    got: list[Any] = []
    deadline = time.monotonic() + WAIT
    while len(got) < n and time.monotonic() < deadline:
        message = queue.get(no_ack=True)
        if message is None:
            time.sleep(0.02)
        else:
            got.append(message)
    while (message := queue.get(no_ack=True)) is not None:
        got.append(message)
    return got


def refusals(*calls: tuple[str | None, Callable[[], Any]]) -> list[Any]:
    """Run each ``(payload, call)``; the payloads MessageNacked named, from whichever call raised it (a
    refusal raised by the publish of that very message may leave it unnamed: then it is ``payload``)."""
    refused: list[Any] = []
    for payload, call in calls:
        try:
            call()
        except MessageNacked as exc:
            refused += named(exc) or [payload]
    return refused


def raised_by(call: Callable[[], Any]) -> KelpError | None:
    try:
        call()
    except KelpError as exc:
        return exc
    return None


def error_of(call: Callable[[], Any]) -> type[KelpError] | None:
    raised = raised_by(call)
    return None if raised is None else type(raised)


def named(exc: MessageNacked) -> list[str]:
    """The payloads of the messages a MessageNacked names."""
    return [bytes(envelope.body).decode().strip('"') for envelope in exc.envelopes]


def drain_until_cancelled(conn: kelp.Connection) -> ConsumerCancelled | None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.25)
        except ConsumerCancelled as exc:
            return exc
        except TimeoutError:
            pass
    return None


def exists(conn: kelp.Connection, name: str) -> bool:
    try:
        conn.channel().queue_declare(name, passive=True)
    except NotFound:
        return False
    except ResourceLocked:
        return True
    return True


def consumers_become(conn: kelp.Connection, name: str, count: int) -> bool:
    """Whether the queue reports ``count`` consumers within 2 x WAIT (a dead process's consumers go once
    its death is noticed: redis after a missed heartbeat or client list check)."""
    deadline = time.monotonic() + 2 * WAIT
    while time.monotonic() < deadline:
        if conn.channel().queue_declare(name, passive=True).consumer_count == count:
            return True
        time.sleep(0.05)
    return False


def gone_within(conn: kelp.Connection, name: str, seconds: float) -> float | None:
    """Seconds until the queue no longer exists (None: still there after ``seconds``)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not exists(conn, name):
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def known_defect(request: pytest.FixtureRequest, url: str, schemes: tuple[str, ...], reason: str) -> None:
    """Mark the test an expected failure (strict) on the transports named by ``schemes``."""
    if url.split(":", 1)[0] in schemes:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


#: A transient publish first: sqlite routes it on a snapshot checked up to 2 ms before (a persistent one
#: always checks first), so it is the one a stale snapshot would misroute.
MODES = ("transient", "persistent")


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)

    def wait(self, conn: kelp.Connection, n: int) -> list[Any]:
        deadline = time.monotonic() + WAIT
        while len(self.messages) < n and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.25)
            except TimeoutError:
                pass
        return [m.payload for m in self.messages]


def first_arrival(conn: kelp.Connection, inbox: Inbox) -> float | None:
    """Seconds until a message reaches ``inbox``, within one wait of WAIT (no call of this process in
    between could apply what another process left due)."""
    start = time.monotonic()
    try:
        conn.drain_events(timeout=WAIT)
    except TimeoutError:
        return None
    return time.monotonic() - start if inbox.messages else None
