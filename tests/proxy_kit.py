"""A TCP proxy for the broker tests (RabbitMQ, Redis): it can cut or freeze every connection it carries,
by hand or every ``cut_every`` bytes. Listens on 127.0.0.1 only, runs in daemon threads, stopped by
``close()``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any


class Proxy:
    """Forwards loopback connections to ``target_port``; ``cut()`` drops them, ``freeze()`` stalls them.

    With ``cut_every``, every connection is dropped each time that many bytes (both ways, all connections
    together) have been forwarded since the last cut; ``cuts`` counts the cuts.
    """

    def __init__(
        self, target_port: int, tls: ssl.SSLContext | None = None, cut_every: int | None = None
    ) -> None:
        self.target_port = target_port
        self._tls = tls
        self._cut_every = cut_every
        self._forwarded = 0
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = False
        self._spawn(self._accept_loop)

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
                if self._tls is not None:  # terminate TLS here, speak plain to the broker
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
                if self._cut_every is not None and self._count(len(data)):
                    # Forward only part of what came: the connection dies in the middle of a command.
                    sink.sendall(data[: len(data) // 2])
                    self.cut()
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _count(self, size: int) -> bool:
        """Add forwarded bytes; True when they reach ``cut_every`` (the counter starts again)."""
        assert self._cut_every is not None
        with self._lock:
            self._forwarded += size
            if self._forwarded < self._cut_every:
                return False
            self._forwarded = 0
            self.cuts += 1
            return True

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
        close_listener(self._listener)
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)


def close_listener(listener: socket.socket) -> None:
    try:
        listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept(); close() alone does not
    except OSError:
        pass
    listener.close()
