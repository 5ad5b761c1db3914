"""bench/celery.py's CPU accounting: which process listens on the broker's port, and CPU time by group."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("celery")
pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "celery.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_celery_under_test", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@contextlib.contextmanager
def _running(source: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A Python process running ``source`` and the first line it prints; killed afterwards."""
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            yield proc, proc.stdout.readline().strip()
        finally:
            proc.kill()


def test_listener_pid_is_the_process_listening_on_the_url_port(bench: ModuleType) -> None:
    source = """
        import socket, sys, time
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
        print(s.getsockname()[1], flush=True); time.sleep(30)
    """
    with _running(source) as (proc, port):
        assert bench._listener_pid(f"amqp://guest:guest@127.0.0.1:{port}/") == proc.pid
        assert bench._listener_pid(f"kelp+redis://127.0.0.1:{port}/0?prefix=x") == proc.pid
        assert bench._listener_pid("kelp+sqlite:///tmp/x.db") is None


def test_cpu_groups_count_the_worker_and_everything_below_it(bench: ModuleType) -> None:
    # a "worker" whose child burns CPU once told to: the child's time is the pool's, not the worker's
    source = """
        import os, sys, time
        if os.fork() == 0:
            sys.stdin.readline()
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass
            time.sleep(30)
        print("ready", flush=True); time.sleep(30)
    """
    with _running(source) as (proc, _):
        children = [
            int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == proc.pid
        ]
        assert len(children) == 1
        before = bench._cpu_groups(proc.pid, None)
        assert set(before) == {"worker", "pool", "client"}
        assert proc.stdin is not None
        proc.stdin.write("go\n")  # the child reads it (the worker never reads its stdin)
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while True:
            after = bench._cpu_groups(proc.pid, proc.pid)
            if after["pool"] - before["pool"] >= 0.25 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert after["pool"] - before["pool"] >= 0.25
        assert after["worker"] - before["worker"] < 0.1
        # the broker group is the listening process and the processes below it (PostgreSQL's backends)
        assert after["broker"] - after["worker"] >= 0.25
        os.kill(children[0], 9)


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0
