"""The socket keeper (kelp._keeper): a process killed -9 with unread bytes in its socket must not reset the
connection; what it wrote reaches the peer, followed by a clean end-of-file. Against a plain TCP peer, so the
kernel's behaviour is what is tested, not a broker's."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kelp._keeper

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the keeper's guarantee is tested on Linux")

WRITER = """
import os, signal, socket, sys
import kelp._keeper

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
if sys.argv[2] == "keeper":
    assert kelp._keeper.keep(sock.fileno()) is not None
assert sock.recv(1) == b"!"  # the peer sent more after this: it stays unread from here on
sock.sendall(b"x" * 2_000_000)
os.kill(os.getpid(), signal.SIGKILL)
"""


class Peer:
    """A TCP peer that sends 64 kB the writer never reads, then reads until end-of-file or an error."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.ending = ""
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, self.listener:
            conn.sendall(b"!" + b"." * 65536)
            try:
                while data := conn.recv(65536):
                    self.received += len(data)
                    time.sleep(0.001)  # a slow reader: the writer's kernel still holds bytes at the kill
                self.ending = "eof"
            except ConnectionResetError:
                self.ending = "reset"
        self.done.set()


def run_writer(mode: str) -> Peer:
    peer = Peer()
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(peer.port), mode], capture_output=True, timeout=60
    )
    assert child.returncode == -9, child.stderr.decode()
    assert peer.done.wait(40)
    return peer


def test_a_killed_process_s_socket_ends_cleanly_after_every_byte() -> None:
    peer = run_writer("keeper")
    assert (peer.ending, peer.received) == ("eof", 2_000_000)


def test_without_the_keeper_the_kernel_resets_the_connection() -> None:
    """The failure the keeper exists for (this is what the test above would see without it)."""
    peer = run_writer("none")
    assert peer.ending == "reset"
    assert peer.received < 2_000_000


def test_a_released_socket_is_no_longer_held() -> None:
    peer = Peer()
    sock = socket.create_connection(("127.0.0.1", peer.port))
    key = kelp._keeper.keep(sock.fileno())
    assert key is not None
    unread = 65537
    while unread:
        unread -= len(sock.recv(unread))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    kelp._keeper.release(key)
    assert peer.done.wait(5)
    assert peer.ending == "eof"
