"""Fixtures for the sqlite transport's own tests: fresh database files and worker processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")


class Worker:
    """A kelp worker process (see worker.py) whose output lines the test reads with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self._partial = ""

    def read_lines(self, n: int, timeout: float = 30) -> list[str]:
        """Wait (bounded) until the worker printed ``n`` lines in total; return them."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while len(self.lines) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"worker printed {len(self.lines)} of {n} lines: {self.lines[-5:]}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.1))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"worker exited early: {err.decode(errors='replace')}")
            self._partial += chunk.decode()
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(done)
        return self.lines

    def finish(self, timeout: float = 60) -> list[str]:
        """Wait for the worker to exit on its own; return every line it printed."""
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err.decode(errors="replace")
        text = self._partial + out.decode()
        return self.lines + [line for line in text.split("\n") if line]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/broker.db"


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()
