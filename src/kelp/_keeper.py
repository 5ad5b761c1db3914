"""The socket keeper: a small companion process that holds a duplicate of each AMQP connection's socket.

Why. A process that dies (``kill -9``, the OOM killer) while bytes wait unread in a socket's receive queue
makes its kernel *reset* the connection instead of closing it: the bytes it had queued but not yet sent are
dropped, and the broker, seeing the reset, may drop what it had received but not yet read. With publisher
confirms on, RabbitMQ's confirms are almost always in flight, so a publisher killed in a fast loop would lose
the tail of what its ``publish()`` calls had returned for.

How. The first connection of a process starts the keeper: ``python -I -S .../kelp/_keeper_process.py`` (the
standard library only) with one end of a ``SOCK_SEQPACKET`` socket pair as its descriptor 3,
stdin/stdout/stderr on ``/dev/null``, in a session of its own (a Ctrl-C or a signal to the process group does
not reach it). Each connection hands it a duplicate of its socket (``SCM_RIGHTS``) and takes it back when the
connection closes. While the process lives the keeper only waits. When the process is gone (its end of the
pair reads end-of-file, however it died), the sockets the keeper still holds stay open, so the kernel sends
everything that was queued, and RabbitMQ goes on reading and confirming it. Once the kernel has sent every
byte and the broker has been silent for a moment (0.3 s: no confirm, no delivery; or more than 1 MiB came in,
deliveries to a dead consumer), the keeper shuts each socket down for writing (FIN after the last byte), reads
and discards what the broker still sends until the broker closes, and closes it: a clean close after the
broker read everything, never a reset (RabbitMQ drops the frames it had not read yet when a connection is
reset, or closed while it was throttling the reader). A consumer's unacked deliveries come back once the
broker sees the FIN, about 0.3 s after the process died (see :mod:`kelp._keeper_process`).

A process that cannot start it (no ``sys.executable``, no ``posix_spawn``, not Linux/macOS) gets None from
:func:`keep`; the driver then waits, per persistent publish, until the kernel has sent the bytes (the
narrower guarantee that was there before). A forked child forgets its parent's keeper and starts its own
when it opens a connection.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable

__all__ = ["keep", "keep_for", "release"]

log = logging.getLogger(__name__)

#: The keeper's program, run by path with ``python -I -S`` (standard library only).
_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_keeper_process.py")


class _Keeper:
    """This process's end of the keeper (one per process; see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._pid = 0  # the process that started it: a forked child starts its own
        self._failed = False
        self._next = 0

    def keep(self, fd: int) -> bytes | None:
        with self._lock:
            control = self._ensure()
            if control is None:
                return None
            self._next += 1
            key = b"%d" % self._next
            try:
                socket.send_fds(control, [b"K" + key], [fd])
            except OSError as exc:
                log.warning(
                    "the socket keeper is gone (%s): amqp persistent publishes now wait until sent, and a "
                    "crash of this process may lose the last ones RabbitMQ had not read",
                    exc,
                )
                self._stop()
                return None
            return key

    def release(self, key: bytes) -> None:
        with self._lock:
            control = self._control
            if control is None or self._pid != os.getpid():
                return
            try:
                control.send(b"D" + key)
            except OSError:
                self._stop()

    def _ensure(self) -> socket.socket | None:
        if self._control is not None and self._pid == os.getpid():
            return self._control
        if self._failed:
            return None
        try:
            self._control = _start()
        except (OSError, AttributeError, ValueError) as exc:
            log.warning(
                "cannot start the socket keeper (%s): amqp persistent publishes wait until sent, and a "
                "crash of this process may lose the last ones RabbitMQ had not read",
                exc,
            )
            self._failed = True
            return None
        self._pid = os.getpid()
        return self._control

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()
        self._control = None
        self._failed = True

    def forget(self) -> None:
        """In a forked child: drop the parent's end without telling the keeper anything."""
        if self._control is not None:
            self._control.close()
        self._control = None
        self._failed = False
        self._pid = 0
        self._lock = threading.Lock()


def _start() -> socket.socket:
    executable = sys.executable
    if not executable or not hasattr(os, "posix_spawn") or not hasattr(socket, "send_fds"):
        raise OSError("no interpreter to run the keeper with")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
        ]
        os.posix_spawn(executable, [executable, "-I", "-S", _PROGRAM], {}, file_actions=actions, setsid=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return ours


_keeper = _Keeper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_keeper.forget)


def keep(fd: int) -> bytes | None:
    """Hand a duplicate of socket ``fd`` to this process's keeper; return the key to :func:`release` it
    with, or None when no keeper runs (then nothing protects the socket from a reset at a crash)."""
    return _keeper.keep(fd)


def release(key: bytes | None) -> None:
    """The connection closed (call this once its socket is shut down): the keeper drops its duplicate."""
    if key is not None:
        _keeper.release(key)


def keep_for(owner: object, fd: int) -> Callable[[], None] | None:
    """:func:`keep` ``fd`` for as long as ``owner`` lives: return the call that releases it (at most once;
    it also runs if ``owner`` is collected without calling it, so a connection dropped without being closed
    is not held open), or None when no keeper runs."""
    key = keep(fd)
    if key is None:
        return None
    return weakref.finalize(owner, release, key)
