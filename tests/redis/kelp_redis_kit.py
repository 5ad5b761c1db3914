"""Private redis-server processes for the redis:// tests: loopback, a free port, a temporary directory.

Tests that restart Redis (durability) start their own server here and never touch the shared one named by
``KELP_TEST_REDIS_URL``. Every wait is bounded; every server is stopped by its own pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

START_TIMEOUT = 10.0
#: Seconds of silence after which a connection's messages are released in these tests.
LIVENESS = 1.0


def with_options(url: str, **options: object) -> str:
    separator = "&" if "?" in url else "?"
    return url + separator + "&".join(f"{key}={value}" for key, value in options.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def have_redis_server() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """One redis-server child process with AOF ``appendfsync always`` in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start; see {self.directory}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no final save; only what the AOF already holds survives."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
