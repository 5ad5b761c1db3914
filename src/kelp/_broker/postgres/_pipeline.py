"""Pipelined publishes on ``postgresql://``: each kelp connection's publishing session, in libpq's pipeline
mode, and its outbox of publishes whose result has not been read yet.

A publish is one prepared statement (``_route.insert_statement`` or ``_delayed.hold_statement``: store the
copies only if the topology counter is still the one they were routed with) followed by a Sync, written to
the socket before ``publish`` returns; its result is not waited for. The Sync ends the statement's
implicit transaction, so the server commits it by itself, whether or not this process is still there to
read the answer; and a failing statement aborts only itself (pipeline mode skips what follows an error up
to the next Sync, and each publish has its own). The socket is handed to the socket keeper
(:mod:`kelp._keeper`): a process killed right after a publish returned does not reset the connection with
answers unread, so the server reads and commits everything it was sent.

Results are read back in order: those already arrived, every READ_EVERY publishes; enough of them to get
under ``max_count`` envelopes and ``max_bytes`` of bodies when the outbox is full (back-pressure); all at
``settle`` (before any other operation of the connection that reads or changes the broker, so that it sees
the connection's earlier publishes) and at ``flush``. A result with the counter confirms its envelopes. A
result without it (the topology changed after they were routed) makes every later one be read too (they
were routed on the same snapshot) and their envelopes routed again and sent again, in publish order. A
statement the server refused is reported, with its envelopes, as MessageNacked by the next publish, flush
or close; the others are stored. A lost session leaves the outbox to :meth:`Publisher.unconfirmed`: the
library publishes it again on its next connection (at least once).
"""

from __future__ import annotations

import re
import select
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

from kelp import _keeper
from kelp._broker.postgres._counters import PUBLISHED
from kelp._envelope import Envelope
from kelp.exceptions import KelpError, MessageNacked, OperationalError

if TYPE_CHECKING:
    from kelp._broker.postgres._store import PostgresStore

__all__ = ["MAX_BYTES", "MAX_COUNT", "Publisher"]

#: Default bounds of the outbox: envelopes, and bytes of bodies, sent and not confirmed yet.
MAX_COUNT = 10_000
MAX_BYTES = 32 * 2**20

#: Results already arrived are read at every READ_EVERY-th publish in flight (each read is a system call).
READ_EVERY = 16
#: ...and READ_LATER seconds after a publish, whatever the connection does next.
READ_LATER = 0.05

_SYNC = pq.ExecStatus.PIPELINE_SYNC
_ROWS = pq.ExecStatus.TUPLES_OK
_FAILED = (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED)
#: SQLSTATE classes of an error that ends the session (admin shutdown, connection failure): not a refusal.
_SESSION_ENDED = (b"57", b"08")


def numbered(statement: str) -> bytes:
    """A statement written with ``%s`` placeholders (kelp's own: no other ``%``) with ``$1``, ``$2``..."""
    count = iter(range(1, 1 << 16))
    text = re.sub("%s", lambda _: f"${next(count)}", statement)
    if "%" in text:
        raise ValueError(f"a statement for the pipeline has a % that is not a placeholder: {statement!r}")
    return text.encode()


class _Sent:
    """One statement in flight: the envelopes it stores, and the answers read for it so far."""

    __slots__ = ("envelopes", "queues", "results", "size", "version")

    def __init__(self, envelopes: list[Envelope], queues: list[str], version: int, size: int) -> None:
        self.envelopes = envelopes
        self.queues = queues
        self.version = version
        self.size = size
        self.results: list[Any] = []


class Publisher:
    """One kelp connection's pipelined publishes (see the module docstring). Thread-safe."""

    def __init__(self, store: PostgresStore, max_count: int = MAX_COUNT, max_bytes: int = MAX_BYTES) -> None:
        self.store = store
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._poll: select.poll | None = None
        self._transformer: Any = None  # psycopg.adapt.Transformer
        self._utf8 = False
        self._prepared: dict[str, bytes] = {}
        self._release: Callable[[], None] | None = None
        self._outbox: deque[_Sent] = deque()
        self._count = 0
        self._bytes = 0
        #: Envelopes whose statement found the topology changed: routed and sent again once read up.
        self._stale: list[Envelope] = []
        self._refused: list[tuple[str, list[Envelope]]] = []
        self._lost: str | None = None
        #: Reads the results of a connection that publishes and then does nothing (see _read_later).
        self._reader: threading.Timer | None = None

    # --- state --------------------------------------------------------------------------------------

    @property
    def unsettled(self) -> bool:
        """Whether publishes wait for their result (a barrier has something to wait for)."""
        return bool(self._outbox or self._stale)

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def unconfirmed(self) -> list[Envelope]:
        """The outbox, in publish order: envelopes sent (or to be sent again) and not confirmed."""
        with self._lock:
            return [e for sent in self._outbox for e in sent.envelopes] + list(self._stale)

    # --- publishing ---------------------------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope], confirm: bool) -> list[Envelope]:
        """Publish a batch (``PostgresStore.publish`` chooses: pipelined or, where it must, at once);
        with ``confirm``, wait for its result. Raises MessageNacked for earlier refusals first (this batch
        is then not published), OperationalError once the session is lost."""
        with self._lock:
            self._check()
            returned = self.store.publish(envelopes, self)
            if confirm:
                self.flush(None)
            return returned

    def send(
        self,
        statement: str,
        params: list[Any],
        version: int,
        envelopes: Sequence[Envelope],
        queues: list[str],
    ) -> None:
        """Write ``statement`` (routed on topology ``version``) and a Sync to the socket; do not wait for
        its result. Raises (nothing sent) for a value that cannot be sent, OperationalError for a lost
        session (the statement may have reached the server: published at least once if retried)."""
        with self._lock:
            self._check_lost()  # (refusals wait for the next publish: this may be a publish again)
            if self._outbox and self._outbox[-1].version != version:
                self.settle()  # the earlier ones were routed on another snapshot: they go first
            size = sum(len(e.body) for e in envelopes)
            if self._count + len(envelopes) > self.max_count or self._bytes + size > self.max_bytes:
                self._read(True, self.max_count - len(envelopes), self.max_bytes - size, None)
            conn = self._session()
            pgconn = conn.pgconn
            with self.store.mapped():
                values, formats = self._dump(conn, params)  # a value psycopg cannot send raises here
                try:
                    name = self._prepared.get(statement)
                    if name is None:
                        name = b"kelp_publish_%d" % len(self._prepared)
                        pgconn.send_prepare(name, numbered(statement))
                        self._prepared[statement] = name
                    pgconn.send_query_prepared(name, values, param_formats=formats)
                    pgconn.pipeline_sync()
                    self._write(pgconn)
                except psycopg.Error as exc:
                    self._broken(exc)
                    raise
            self._outbox.append(_Sent(list(envelopes), queues, version, size))
            self._count += len(envelopes)
            self._bytes += size
            # Counted once sent (a process idle after its publishes reads no results): taken back if not
            # stored.
            self.store.count_all(PUBLISHED, queues)
            try:
                if len(self._outbox) % READ_EVERY == 0:
                    self._read(False, 0, 0, None)
            except (OperationalError, psycopg.Error):
                pass  # this one was sent: the loss is raised by the next call (the outbox is unconfirmed)
            if self._reader is None:
                self._read_later()

    def _read_later(self) -> None:
        """Read the results READ_LATER seconds from now, and again until none is owed. A statement that
        found the topology changed stored nothing: its envelopes are routed again and sent again only
        once the results are read, which a connection that only publishes might never do by itself."""
        timer = self._reader = threading.Timer(READ_LATER, self._read_owed)
        timer.daemon = True
        timer.start()

    def _read_owed(self) -> None:
        with self._lock:
            self._reader = None
            if self._lost is not None or not (self._outbox or self._stale):
                return
            try:
                self._read(False, 0, 0, None)
            except (OperationalError, psycopg.Error, KelpError):
                return  # kept for the connection's next call, which raises the loss or the refusal
            if self._outbox or self._stale:
                self._read_later()

    def settle(self, deadline: float | None = None) -> None:
        """Wait for the result of every publish sent (sending again those the topology made stale); keep
        refusals for the next publish, flush or close. TimeoutError past ``deadline`` (monotonic)."""
        with self._lock:
            while self._outbox or self._stale:
                self._check_lost()
                self._read(True, 0, 0, deadline)

    def flush(self, timeout: float | None) -> None:
        """The barrier: :meth:`settle`, then raise MessageNacked for the refusals not reported yet."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            try:
                self.settle(deadline)
            except OperationalError:
                self._check()  # refusals read before the loss still reach the user
                raise
            self._check()

    def close(self) -> None:
        """End the session without waiting (the library flushes first); the outbox stays unconfirmed."""
        with self._lock:
            if self._reader is not None:
                self._reader.cancel()
                self._reader = None
            conn, self._conn = self._conn, None
            release, self._release = self._release, None
            self._lost = self._lost or "the connection was closed"
        if conn is not None:
            conn.close()
        if release is not None:
            release()

    # --- the session --------------------------------------------------------------------------------

    def _check_lost(self) -> None:
        if self._lost is not None:
            raise OperationalError(
                f"postgresql {self.store.where}: the publishing session was lost: {self._lost}"
            )

    def _check(self) -> None:
        """Raise MessageNacked for the refusals not reported yet, then OperationalError if lost."""
        if self._refused:
            refused, self._refused = self._refused, []
            reasons = sorted({reason for reason, _ in refused})
            envelopes = [envelope for _, batch in refused for envelope in batch]
            raise MessageNacked(
                f"{len(envelopes)} published message(s) not enqueued: {'; '.join(reasons)}",
                envelopes=envelopes,
            )
        self._check_lost()

    def _session(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None:
            conn = self.store.open()
            try:
                with self.store.mapped():
                    if self.store.flush_publishes:
                        conn.execute("SET synchronous_commit = on")
                    conn.pgconn.enter_pipeline_mode()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._transformer = Transformer.from_context(conn)
            self._utf8 = conn.info.encoding == "utf-8"
            self._poll = select.poll()
            self._poll.register(conn.pgconn.socket, select.POLLIN)
            self._release = _keeper.keep_for(self, conn.pgconn.socket)
        return conn

    def _broken(self, exc: BaseException) -> None:
        """The session is lost: keep the outbox (unconfirmed), drop the session."""
        self._lost = str(exc) or type(exc).__name__
        conn, self._conn = self._conn, None
        release, self._release = self._release, None
        if conn is not None:
            conn.close()
        if release is not None:
            release()

    def _dump(self, conn: psycopg.Connection[Any], params: list[Any]) -> tuple[list[Any], list[int]]:
        """The parameters as the server reads them: bytes (and lists of them) binary, the rest text (the
        prepared statement's casts give their types)."""
        if self._utf8 and all(type(p) in _SCALARS for p in params):
            return [_scalar(p) for p in params], [1 if type(p) is bytes else 0 for p in params]
        assert self._transformer is not None
        binary = [
            isinstance(p, bytes) or (isinstance(p, list) and bool(p) and isinstance(p[0], bytes))
            for p in params
        ]
        formats = [PyFormat.BINARY if b else PyFormat.TEXT for b in binary]
        values = list(self._transformer.dump_sequence(params, formats))
        return values, [1 if b else 0 for b in binary]

    def _write(self, pgconn: pq.abc.PGconn) -> None:
        """Hand every byte libpq holds to the kernel, reading answers meanwhile (a server blocked writing
        its answers stops reading)."""
        if not pgconn.flush():
            return
        poll = select.poll()
        poll.register(pgconn.socket, select.POLLIN | select.POLLOUT)
        assert self._conn is not None
        with self.store.watchdog.watch(self._conn):
            while pgconn.flush():
                if any(events & select.POLLIN for _, events in poll.poll()):
                    pgconn.consume_input()

    # --- results ------------------------------------------------------------------------------------

    def _read(self, block: bool, count: int, size: int, deadline: float | None) -> None:
        """Read results in order: those already here, or (``block``) until at most ``count`` envelopes and
        ``size`` bytes are unconfirmed - all of them once one was stale, which are then sent again."""
        conn = self._conn
        if conn is None:
            if self._stale and not self._outbox:
                self._resend()
            return
        pgconn = conn.pgconn
        try:
            with self.store.mapped():
                pgconn.consume_input()
                while self._outbox:
                    if block and not self._stale and self._count <= count and self._bytes <= size:
                        break
                    if pgconn.is_busy():
                        if not (block or self._stale):
                            break
                        self._wait(deadline)
                        pgconn.consume_input()
                        continue
                    result = pgconn.get_result()
                    if result is None:
                        continue  # the end of one statement's results
                    if result.status == _SYNC:
                        self._done(self._outbox.popleft())
                    elif result.status in _FAILED and (
                        pgconn.status == pq.ConnStatus.BAD
                        or (result.error_field(pq.DiagnosticField.SQLSTATE) or b"")[:2] in _SESSION_ENDED
                    ):
                        raise psycopg.OperationalError(_message(result))
                    else:
                        self._outbox[0].results.append(result)
        except psycopg.Error as exc:
            self._broken(exc)
            raise
        except OperationalError as exc:
            self._broken(exc)
            raise
        if self._stale and not self._outbox:
            self._resend()

    def _wait(self, deadline: float | None) -> None:
        assert self._poll is not None
        assert self._conn is not None
        with self.store.watchdog.watch(self._conn):
            if deadline is None:
                self._poll.poll()
                return
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise TimeoutError(f"{self._count} published messages still wait for the server's answer")

    def _done(self, sent: _Sent) -> None:
        self._count -= len(sent.envelopes)
        self._bytes -= sent.size
        failed = [r for r in sent.results if r.status in _FAILED]
        last = sent.results[-1] if sent.results else None
        ok = not failed and last is not None and last.status == _ROWS and last.ntuples == 1
        version = last.get_value(0, 0) if ok and last is not None else None
        if version is not None and int(version) == sent.version:
            return  # stored
        self.store.count_all(PUBLISHED, {queue: -n for queue, n in Counter(sent.queues).items()})
        if failed:
            self._refused.append((f"refused by the server: {_message(failed[0])}", sent.envelopes))
        else:
            self._stale.extend(sent.envelopes)

    def _resend(self) -> None:
        """Route again and send the envelopes the topology made stale (all read up), in publish order."""
        stale, self._stale = self._stale, []
        self.store.forget_topology()
        try:
            self.store.publish(stale, self)
        except OperationalError:
            self._stale = stale + self._stale  # still owed: unconfirmed
            raise
        except KelpError as exc:  # an exchange deleted meanwhile, a full queue...: reported, never dropped
            reason = exc.args[0] if exc.args else type(exc).__name__
            envelopes = exc.envelopes if isinstance(exc, MessageNacked) and exc.envelopes else stale
            self._refused.append((str(reason), envelopes))


_SCALARS = frozenset({type(None), bool, int, str, bytes})


def _scalar(value: Any) -> bytes | None:
    """A scalar parameter as psycopg dumps it (text format; bytes binary), for a UTF-8 session."""
    if value is None or type(value) is bytes:
        return value
    if type(value) is bool:
        return b"t" if value else b"f"
    if type(value) is int:
        return str(value).encode()
    if "\x00" in value:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return value.encode()  # type: ignore[no-any-return]


def _message(result: Any) -> str:
    primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or result.error_message or b""
    return bytes(primary).decode("utf-8", "replace").strip() or "an error"
