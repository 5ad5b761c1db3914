"""Helpers for the RabbitMQ tests: the shared TCP proxy with AMQP URLs, a fake AMQP server.

Everything listens on 127.0.0.1 only, runs in daemon threads, and is stopped by ``close()``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import proxy_kit
from kelp.amqp._frames import FRAME_METHOD, encode_frame
from kelp.amqp._spec import METHODS_BY_NAME, encode_method
from proxy_kit import close_listener

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rabbitmq.sh"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def restart_node(timeout: float = 90) -> None:
    """Stop and start the test node (``scripts/rabbitmq.sh restart``): same ports, same data."""
    directory = os.environ["KELP_TEST_RABBITMQ_DIR"]
    subprocess.run([str(SCRIPT), "restart", directory], check=True, timeout=timeout, capture_output=True)


def rabbitmqctl(*args: str, timeout: float = 30) -> None:
    """Run ``rabbitmqctl -n NODE ...`` against the test node (``KELP_TEST_RABBITMQ_DIR``)."""
    directory = Path(os.environ["KELP_TEST_RABBITMQ_DIR"])
    node = (directory / "node").read_text().strip()
    env = {**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_CONF_ENV_FILE": "/dev/null"}
    subprocess.run(
        ["rabbitmqctl", "-n", node, *args], check=True, timeout=timeout, capture_output=True, env=env
    )


class Proxy(proxy_kit.Proxy):
    """The shared test proxy (``tests/proxy_kit.py``), with AMQP URLs."""

    def url(self, **query: Any) -> str:
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqp://guest:guest@127.0.0.1:{self.port}/" + (f"?{extra}" if extra else "")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost (openssl), and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def method(channel: int, name: str, *args: Any) -> bytes:
    return encode_frame(FRAME_METHOD, channel, encode_method(METHODS_BY_NAME[name], args), 2**31)


HANDSHAKE = (
    method(0, "connection.start", 0, 9, {"product": "fake"}, b"PLAIN", b"en_US")
    + method(0, "connection.tune", 2047, 131072, 0)
    + method(0, "connection.open-ok", "")
)
#: The answer to the client's first channel.open (send it after a pause: the client must ask first).
CHANNEL_OPEN_OK = method(1, "channel.open-ok", b"")


class FakeServer:
    """Accepts one connection, reads the protocol header, then sends ``script`` parts with pauses."""

    def __init__(self, *script: bytes | float) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._script = script
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.recv(8)
                for step in self._script:
                    if isinstance(step, float):
                        if self._done.wait(step):
                            return
                    else:
                        conn.sendall(step)
                self._done.wait(10)
            except OSError:
                pass

    def close(self) -> None:
        self._done.set()
        close_listener(self._listener)
        self._thread.join(timeout=5)
