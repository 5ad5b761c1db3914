"""The socket keeper's own program (see :mod:`kelp._keeper`), run as ``python -I -S <this file>``.

It imports the standard library only. Descriptor 3 is its end of a ``SOCK_SEQPACKET`` pair with the process
it keeps sockets for: ``K<key>`` with one descriptor holds a socket, ``D<key>`` drops it. End-of-file on
descriptor 3 means that process is gone. Each socket still held is then left open while the broker still
answers (it is still reading and confirming what the process wrote), and shut down for writing once the
kernel has sent every byte and the broker has been silent for ``QUIET`` seconds: a FIN after the last
byte, never a reset. A connection that goes on receiving more than ``FEED`` bytes is a consumer being fed
deliveries (confirms are a few bytes each): it is shut down as soon as its bytes are sent, so that the broker
gives its unacked deliveries to another consumer at once. What the broker sends is read and discarded until
it closes, and then the socket is closed; after ``LIMIT`` seconds in all, whatever is left is closed.
"""

import os
import select
import signal
import socket
import struct
import time

QUIET = 0.3
FEED = 1 << 20
LIMIT = 30.0
SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes written and not yet acknowledged by the peer


def unsent(sock: socket.socket) -> int:
    try:
        import fcntl

        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0])
    except (ImportError, OSError):
        return 0


def hold(control: socket.socket) -> dict[bytes, socket.socket]:
    held: dict[bytes, socket.socket] = {}
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, 1)
        except OSError:
            message, fds = b"", []
        if not message:
            return held
        key = message[1:]
        if message[:1] == b"K" and fds:
            held[key] = socket.socket(fileno=fds[0])
        elif message[:1] == b"D":
            sock = held.pop(key, None)
            if sock is not None:
                sock.close()


def let_go(sockets: list[socket.socket]) -> None:
    deadline = time.monotonic() + LIMIT
    heard = dict.fromkeys(sockets, time.monotonic())
    fed = dict.fromkeys(sockets, 0)
    ending: set[socket.socket] = set()
    for sock in sockets:
        sock.setblocking(False)
    while heard and time.monotonic() < deadline:
        now = time.monotonic()
        for sock in list(heard):
            quiet = now - heard[sock] >= QUIET or fed[sock] > FEED
            if sock not in ending and quiet and not unsent(sock):
                ending.add(sock)
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    heard.pop(sock)
                    sock.close()
        if not heard:
            break
        ready, _, _ = select.select(list(heard), [], [], QUIET / 3)
        for sock in ready:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                heard[sock] = time.monotonic()
                fed[sock] += len(data)
            else:
                heard.pop(sock)
                sock.close()
    for sock in heard:
        sock.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.closerange(4, 65536)
    let_go(list(hold(socket.socket(fileno=3)).values()))


if __name__ == "__main__":
    main()
