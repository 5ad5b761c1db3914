"""Helpers for the RabbitMQ tests: a TCP proxy that can cut or freeze a connection, a fake AMQP server.

Everything listens on 127.0.0.1 only, runs in daemon threads, and is stopped by ``close()``.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

from kelp.amqp._frames import FRAME_METHOD, encode_frame
from kelp.amqp._spec import METHODS_BY_NAME, encode_method

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


class Proxy:
    """Forwards loopback connections to ``target_port``; ``cut()`` drops them, ``freeze()`` stalls them."""

    def __init__(self, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = False
        self._spawn(self._accept_loop)

    def url(self, **query: Any) -> str:
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        return f"amqp://guest:guest@127.0.0.1:{self.port}/" + (f"?{extra}" if extra else "")

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                if self._tls is not None:  # terminate TLS here, speak plain AMQP to the broker
                    client.settimeout(5)
                    client = self._tls.wrap_socket(client, server_side=True)
                    client.settimeout(None)
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._thawed.wait()
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def freeze(self) -> None:
        """Stop forwarding (both ways) while keeping the TCP connections open: a silent peer."""
        self._thawed.clear()

    def cut(self) -> None:
        """Drop every proxied connection at once (new connections are still accepted)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._thawed.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        _close_listener(self._listener)
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)


def _close_listener(listener: socket.socket) -> None:
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept(); close() alone does not
    except OSError:
        pass
    listener.close()


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
        _close_listener(self._listener)
        self._thread.join(timeout=5)
