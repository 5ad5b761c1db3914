"""Blocking I/O for :class:`kelp.amqp.Connection`: one socket, one reader thread, one write lock.

The twin of :mod:`kelp.aio._amqp_io`, with the same interface; ``kelp.transport.amqp`` (generated from
``kelp.aio.transport.amqp``) is written against it. Threads meet on one condition variable, whose lock also
guards the sans-IO core (it is not thread-safe):

* **one reader at a time** waits for the socket, feeds the core, hands each event to ``on_event`` with the
  lock held, then wakes every waiter (``notify_all``): no caller ever sleep-polls. A thread blocked in
  ``wait_for`` (a publish awaiting its confirm, ``drain_events``) reads the socket itself when nobody else
  does, so its answer reaches it without a hand-off between threads (one wake-up per round trip, as a
  single-threaded client). Otherwise the **reader thread** reads, at most once per ``_LINGER`` seconds
  (what arrives meanwhile is read in one go): while callers waited or wrote within the last ``_LINGER``
  seconds it reads only what has arrived, without waiting, and leaves the socket to them; once they are
  gone it waits on a selector bounded by the next heartbeat deadline, and steps aside, woken through a
  socket pair, when a caller starts waiting. Callers never wake it otherwise (a wake-up per call costs
  both threads the GIL). It always sends heartbeats and declares the peer dead after two silent
  intervals, reading or not.
* **writers** (any thread) take the write lock, produce their bytes from the core under the condition's lock
  (so wire order is command order) and ``sendall`` them without holding it, so the reader keeps reading
  while a big batch goes out. Bytes the core produced on its own (``close-ok``, ``flow-ok``) are flushed by
  whoever holds the write lock; the reader only ever *tries* to take it, so it never waits behind a writer
  that the broker is not reading from.

Errors are not mapped here: ``on_lost`` receives the raw ``OSError`` / protocol error / ``TimeoutError``
once, and every later call raises it again.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable

from kelp import _keeper
from kelp.amqp import Connection, Event, ProtocolError

__all__ = ["Driver", "limit_unsent", "readable_bytes", "unsent_bytes"]

if sys.platform == "linux":
    import fcntl
    import termios

#: Linux's ioctl for the bytes a socket's kernel queue holds but has not sent yet (SIOCOUTQNSD).
_SIOCOUTQNSD = 0x894B

_READ_SIZE = 256 * 1024
#: The reader thread reads at most once per this many seconds, and only without waiting while callers
#: waited or wrote within as long: a loop of waiting calls (per-publish confirms, a consumer's drains) reads
#: without a hand-off between threads, and a publisher's pipelined confirms are read in batches.
_LINGER = 0.02
#: How often the reader thread looks whether the callers that were reading have gone.
_CHECK = 0.25


class Driver:
    """Drives one core over a blocking socket (see the module docstring)."""

    def __init__(
        self,
        core: Connection,
        on_event: Callable[[Event], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._core = core
        self._on_event = on_event
        self._on_lost = on_lost
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # the reader thread sleeps on its own condition (same lock): callers' notify_all does not wake it
        self._idle = threading.Condition(lock)
        self._write_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # who reads (under the condition): a thread in the read section; callers in wait_for; when the last
        # left; whether the reader thread sits in select (then a caller wakes it through _wake)
        self._reading = False
        self._callers = 0
        self._callers_left = 0.0
        self._read_at = 0.0  # when the reader thread last read
        self._wrote_at = 0.0  # when a persistent publish last read what had come (_read_available)
        self._thread_selecting = False
        self._wake_r: socket.socket | None = None  # a socket pair to wake the reader thread from select
        self._wake_w: socket.socket | None = None
        self._caller_selector: selectors.BaseSelector | None = None
        # what each read lands in (one reader at a time): recv(_READ_SIZE) would allocate the whole size
        # for every read (past malloc's mmap threshold: a fresh mapping each time), which costs several times
        # the system call when a few hundred bytes came
        self._buffer = memoryview(bytearray(_READ_SIZE))
        # the socket keeper's key for this socket (None: no keeper; then a persistent publish waits until
        # the kernel has sent its bytes, see send)
        self._kept: Callable[[], None] | None = None
        #: The error that ended the connection (None while it lives).
        self.error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def connect(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        timeout: float | None,
    ) -> None:
        """Open the socket (TLS when ``ssl_context``), send the protocol header and start the reader."""
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            limit_unsent(sock)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._kept = _keeper.keep_for(self, sock.fileno())
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._read_loop, name=f"kelp-amqp-reader-{host}:{port}", daemon=True
        )
        self.send(self._core.initiate)
        self._thread.start()

    def close(self) -> None:
        """Drop the socket at once and stop the reader (the caller already said ``connection.close``)."""
        self._fail(ConnectionAbortedError("the connection was closed by this client"), report=False)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
        if thread is None or not thread.is_alive():
            self._close_wake()

    def _close_wake(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    # -- writing --------------------------------------------------------------------------------------------

    def send(self, produce: Callable[[], bytes], drain: bool = False) -> None:
        """Write what ``produce()`` returns; ``produce`` runs under the core's lock, in wire order.

        Returns once every byte was handed to the kernel (``sendall``). With ``drain`` (a persistent
        publish) and no socket keeper (:mod:`kelp._keeper`), also waits until the kernel has sent them and
        reads what arrived by then, so that a crash right after cannot reset the connection over them.
        """
        self._write_lock.acquire()
        try:
            with self._cond:
                if self.error is not None:
                    raise self.error
                data = produce()
        except BaseException:
            self._write_lock.release()
            raise
        self._write_and_release(data)
        if drain and self._kept is None:
            self._wait_sent()
            self._read_available()

    def _read_available(self) -> None:
        """Read what the broker sent by now (confirms), if no other thread is reading, without waiting.

        A process that dies with unread bytes in its receive queue makes the kernel reset the connection,
        and the broker drops what it had not read yet; leaving nothing unread when a publish returns keeps
        that window small.
        """
        self._wrote_at = time.monotonic()  # the reader thread leaves the socket to us for now
        sock = self._sock
        if sock is None or not (readable_bytes(sock) or (isinstance(sock, ssl.SSLSocket) and sock.pending())):
            return
        with self._cond:
            if self._thread_selecting:  # the reader thread has the socket: it steps aside (and stays off)
                self._poke()
                self._cond.wait_for(lambda: not self._reading, 0.05)
            if self._reading or self.error is not None or self._sock is None:
                return  # another thread reads it now
            self._read_once(self._callers_selector(), 0.0)

    def _callers_selector(self) -> selectors.BaseSelector:
        selector = self._caller_selector
        if selector is None:
            assert self._sock is not None
            selector = self._caller_selector = selectors.DefaultSelector()
            selector.register(self._sock, selectors.EVENT_READ)
        return selector

    def _wait_sent(self) -> None:
        sock = self._sock
        if sock is None or not unsent_bytes(sock):
            return
        poller = select.poll()
        try:
            poller.register(sock, select.POLLOUT)
        except ValueError:  # the reader thread already closed the socket: the connection is gone
            if self.error is not None:
                raise self.error from None
            raise
        # with limit_unsent, the socket polls writable only once nothing is left unsent
        while self.error is None and unsent_bytes(sock):
            poller.poll(50)
        if self.error is not None:
            raise self.error

    def _write_and_release(self, data: bytes) -> None:
        """With the write lock held: write ``data`` and whatever the core queued meanwhile, then release.

        The lock is released while the condition's lock is held, so a reader that failed to take it has
        its queued bytes picked up here.
        """
        sock = self._sock
        assert sock is not None
        try:
            while True:
                if data:
                    sock.sendall(data)
                    self._core.note_sent(time.monotonic())
                with self._cond:
                    data = self._core.data_to_send() if self.error is None else b""
                    if not data:
                        self._write_lock.release()
                        return
        except BaseException as exc:
            self._write_lock.release()
            if isinstance(exc, OSError):
                self._fail(exc)
            raise

    def _flush_from_reader(self, heartbeat: bool) -> None:
        """Called with the condition's lock held: flush queued bytes (and a heartbeat) if nobody writes."""
        if not self._write_lock.acquire(blocking=False):
            return  # a writer is writing: it will pick up the queued bytes, and its write counts as traffic
        core = self._core
        data = core.heartbeat() if heartbeat and core.is_open else core.data_to_send()
        self._cond.release()
        try:
            self._write_and_release(data)
        finally:
            self._cond.acquire()

    # -- waiting --------------------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Block until ``predicate()`` is true (re-checked after every batch of events); False on timeout.

        Reads the socket itself while no other thread does (see the module docstring).
        """
        cond = self._cond
        with cond:
            if predicate():
                return True
            deadline = None if timeout is None else time.monotonic() + timeout
            self._callers += 1
            try:
                if self._thread_selecting:
                    self._poke()
                while not predicate():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    if self._reading or self.error is not None or self._sock is None:
                        cond.wait(left)
                        continue
                    self._read_once(self._callers_selector(), 1.0 if left is None else min(left, 1.0))
                return True
            finally:
                self._callers -= 1
                self._callers_left = time.monotonic()
                cond.notify_all()

    def _poke(self) -> None:
        try:
            if self._wake_w is not None:
                self._wake_w.send(b"\0")
        except OSError:
            pass  # already poked (the buffer is full) or closing

    def _read_once(self, selector: selectors.BaseSelector, wait: float | None) -> None:
        """With the condition's lock held and nobody else reading: wait up to ``wait`` s for the socket,
        then feed what came to the core and wake every waiter. Failures end the connection."""
        sock = self._sock
        assert sock is not None
        cond = self._cond
        core = self._core
        self._reading = True
        cond.release()
        try:
            data = None
            try:
                # TLS may hold decrypted bytes that select() cannot see
                ready = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if not ready:
                    poked = False
                    for key, _ in selector.select(wait):
                        if key.fileobj is not sock:
                            _drain(key.fileobj)  # type: ignore[arg-type]
                            poked = True
                        else:
                            ready = True
                    if poked and self._callers:
                        ready = False  # the reader thread steps aside: the caller that poked it reads
                if ready:
                    buffer = self._buffer
                    data = bytes(buffer[: sock.recv_into(buffer)])
            finally:
                cond.acquire()
                self._reading = False
            if self.error is not None:
                return
            now = time.monotonic()
            if data is not None:
                core.receive_data(data, now)
                for event in core.events():
                    self._on_event(event)
                if not data:
                    self._fail(ConnectionResetError("the broker closed the TCP connection"))
                    return
            self._flush_from_reader(False)
        except (OSError, ProtocolError, ValueError, KeyError) as exc:
            self._fail(exc)
        finally:
            cond.notify_all()

    # -- the reader thread ----------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        core = self._core
        cond = self._cond
        selector = selectors.DefaultSelector()  # not select(): it fails on descriptors past 1024
        try:
            selector.register(sock, selectors.EVENT_READ)
            assert self._wake_r is not None
            selector.register(self._wake_r, selectors.EVENT_READ)
            with cond:
                while not self._dead():
                    now = time.monotonic()
                    if core.peer_timed_out(now):
                        raise TimeoutError(
                            f"no data from the broker for two heartbeat intervals "
                            f"({2 * core.heartbeat_interval} s): it is unreachable or stalled"
                        )
                    self._flush_from_reader(core.needs_heartbeat(now))
                    wait = _next_deadline(core)
                    if wait is not None:
                        wait = max(0.0, wait - now)
                    # Callers wake this thread neither when they come nor when they go (a wake-up per call
                    # would cost both threads the GIL): it looks at the clock instead.
                    if self._reading or self._callers:
                        self._idle.wait(_sooner(wait, _CHECK))  # callers read: keep the heartbeats
                        continue
                    pause = self._read_at + _LINGER - now
                    if pause > 0:  # what arrives meanwhile waits in the kernel, to be read in one go
                        self._idle.wait(_sooner(wait, pause))
                        continue
                    if now < self._active_at() + _LINGER:
                        # callers waited or wrote a moment ago and may come back at once (a consumer
                        # between deliveries, a publisher between messages): read what came, without
                        # waiting, and leave the socket to them
                        self._read_once(selector, 0.0)
                    else:
                        self._thread_selecting = True
                        try:
                            self._read_once(selector, wait)
                        finally:
                            self._thread_selecting = False
                    self._read_at = time.monotonic()
        except (OSError, ProtocolError, ValueError, KeyError) as exc:
            self._fail(exc)
        finally:
            selector.close()
            if self._caller_selector is not None:
                self._caller_selector.close()
            self._close_wake()
            sock.close()

    def _active_at(self) -> float:
        """When a caller last waited, wrote, or read after a persistent publish."""
        return max(self._callers_left, self._wrote_at, self._core.last_sent or 0.0)

    def _fail(self, exc: BaseException, report: bool = True) -> None:
        with self._cond:
            if self.error is not None:
                return
            self.error = exc
            if report:
                self._on_lost(exc)
            self._cond.notify_all()
            self._idle.notify_all()
        # Shut the socket down but leave closing it to the reader thread: a closed descriptor would
        # silently leave its selector, while a shut-down one wakes it with end-of-file.
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            kept, self._kept = self._kept, None
            if kept is not None:
                kept()
            thread = self._thread
            if thread is None or not thread.is_alive():
                sock.close()

    def _dead(self) -> bool:
        return self.error is not None


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass  # nothing left (EAGAIN)


def _sooner(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def _next_deadline(core: Connection) -> float | None:
    """The earliest heartbeat deadline (ours to send, or the peer's to answer by), or None."""
    ours = core.next_heartbeat_deadline()
    theirs = core.peer_deadline()
    if ours is None:
        return theirs
    if theirs is None:
        return ours
    return min(ours, theirs)


def limit_unsent(sock: socket.socket) -> None:
    """Make ``sock`` poll writable only when the kernel has nothing left unsent (``TCP_NOTSENT_LOWAT``).

    A persistent message must have left the process when publish returns. Bytes merely queued in the
    kernel are not enough: a process killed while the broker's confirms wait unread in its receive queue
    makes the kernel reset the connection and drop what it had not sent yet.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is not None and sys.platform == "linux":
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:
            pass


def readable_bytes(sock: socket.socket) -> int:
    """How many received bytes wait unread in the kernel (1 where this cannot be known: go and read)."""
    if sys.platform != "linux":
        return 1
    try:
        value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 1
    return value


def unsent_bytes(sock: socket.socket) -> int:
    """How many written bytes the kernel still holds unsent (0 where this cannot be known)."""
    if sys.platform != "linux":
        return 0
    try:
        value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return value
