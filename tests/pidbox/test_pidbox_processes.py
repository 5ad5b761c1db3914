"""Mailbox across processes: three node processes on one broker answer a client in the test process.

Runs on sqlite (a file shared by the processes), redis (KELP_TEST_REDIS_URL) and amqp (KELP_TEST_AMQP_URL);
a transport whose server is not configured is skipped with the reason. Node processes are killed when the
test ends, however it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import kelp
from kelp.pidbox import Mailbox

NODE = Path(__file__).with_name("pidbox_node.py")


def _url(transport: str, tmp_path: Path) -> str:
    if transport == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    var = {"redis": "KELP_TEST_REDIS_URL", "amqp": "KELP_TEST_AMQP_URL"}[transport]
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"{var} is not set: no {transport} server to run this test against")
    return url


@pytest.fixture(params=["sqlite", "redis", "amqp"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, tmp_path)


@pytest.fixture
def nodes(url: str) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    namespace = f"proc-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in range(3):
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(NODE), url, namespace, f"worker{n}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", "a node process failed to start"
        yield namespace, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def _merged(replies: list[dict[str, object]]) -> dict[str, object]:
    merged: dict[str, object] = {}
    for reply in replies:
        merged.update(reply)
    return merged


def test_three_node_processes(url: str, nodes: tuple[str, list[subprocess.Popen[str]]]) -> None:
    namespace, procs = nodes
    with kelp.Connection(url) as conn:
        mailbox = Mailbox(namespace)(conn)
        everyone = _merged(mailbox.multi_call("whoami", timeout=2))
        assert everyone == {
            f"worker{n}": {"hostname": f"worker{n}", "pid": proc.pid} for n, proc in enumerate(procs)
        }
        assert mailbox.call(["worker1"], "add", {"value": 5}, timeout=5) == [{"worker1": 5}]
        mailbox.cast(["worker1", "worker2"], "add", {"value": 2})
        totals = _merged(mailbox.multi_call("add", {"value": 0}, timeout=2))
        assert totals == {"worker0": 0, "worker1": 7, "worker2": 2}
        assert _merged(mailbox.multi_call("shutdown", timeout=2)) == {f"worker{n}": "bye" for n in range(3)}
    for proc in procs:
        assert proc.wait(timeout=10) == 0
