# Generated from src/kelp/aio/transport/postgres.py by scripts/unasync.py; do not edit.
"""``postgresql://user:pass@host:5432/db``: a broker kept in a PostgreSQL database (also ``postgres://``).

Every process connected to the same database and schema shares its exchanges, queues and messages; kelp
routes at publish time (RabbitMQ's semantics, as on ``memory://`` and ``sqlite://``) and stores one row
per routed copy. Query options: ``schema`` (the broker's schema, default ``kelp``: one database can hold
several brokers), ``synchronous_commit=off|on`` (see below), ``connect_timeout`` (seconds; by default the
Connection's ``connect_timeout``, at least 2), ``sslmode`` (libpq's), ``liveness`` (seconds, default 10, 0
off: see below), ``confirm_publish`` (each publish waits for its result) and ``max_unconfirmed`` /
``max_unconfirmed_bytes`` (the outbox's bounds, 10,000 messages and 32 MiB of bodies by default).

Publishes are pipelined (kelp._broker.postgres._pipeline): each connection publishes on a database
session of its own in libpq's pipeline mode, one statement and its own commit (a Sync) per publish,
written to the socket before ``publish`` returns, the result read later. So on return the message has
left the process: the server commits it even if the process is killed right then (the socket keeper
holds the socket until the server has read everything), and it survives ``kill -9`` of every kelp process
and a clean restart of the server (if persistent: ``delivery_mode`` 2, the default; a restart drops
transient ones, as RabbitMQ's does). ``flush`` (and ``close``) waits for every result; ``confirm_publish``
waits per publish. A statement the server refused is raised as MessageNacked naming its messages by the
next publish, flush or close; a publish that found the topology changed since it was routed is routed
again and sent again, in order; after a lost session the unconfirmed ones are published again (at least
once). Any other operation of the connection (declare, bind, purge, get, consume...) first waits for its
publishes, so it sees them. By default commits do not wait for the WAL flush (PostgreSQL's
``synchronous_commit = off``, as ``sqlite://``'s ``synchronous=normal``): a crash of the server or of the
machine may lose the publishes of its last fraction of a second. With ``synchronous_commit=on`` the
server flushes each publish before it answers: every confirmed publish (``flush`` returned, or
``confirm_publish``) is crash- and power-loss safe. Publishes that wait for their result at once: a batch
with a ``mandatory`` message (unroutable ones are returned), one reaching a queue with a length limit
(``reject-publish`` refusals raise MessageNacked from that publish), a batch of both delayed and ready
messages, and one over 64 MiB.
Acks are committed in batches, with the next claim or within 50 ms: an ack lost to a crash means a
redelivery (flagged), never a loss.

Delayed messages (``countdown`` / ``eta``) are routed at publish and held in a table of their own, with
their due time, until a process finds them due and moves them into their queues; a waiting consumer's
wait ends at the earliest due time (announced by NOTIFY when a publish brings it forward). They persist
as ready messages do; ``cancel_delayed`` removes them by message id.

Consumers claim rows with ``FOR UPDATE SKIP LOCKED`` and are woken by LISTEN/NOTIFY. Unacked messages
return to their queue, flagged ``redelivered``, when their channel or connection closes, or when the
connection's database session ends (process killed, network cut): another process connected to the
broker notices within about a second. The connection itself learns it within about a second too: its
``drain`` raises OperationalError and it reports itself disconnected (acks then raise; an ack sent before
the loss was noticed deletes only copies the connection still holds). A process that hangs (stopped,
deadlocked) keeps its session open: with ``liveness`` (PostgreSQL 14+) the server ends a connection's
session once it has been idle that long, and a thread of each running process keeps its sessions from
idling, so a hung process's unacked messages come back within about ``liveness`` + 1 seconds while a
busy one keeps them. A server that stops answering (frozen, cut off by a black-holed network) is found
out by kelp._broker.postgres._watchdog: a call waiting on it raises OperationalError within about 10 s
instead of waiting for ever. After a restart of PostgreSQL the first connection restarts the broker:
non-durable queues and exchanges and transient messages are gone; persistent messages on durable queues
stay. A message over 256 MiB is refused (PreconditionFailed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from kelp._backend import run_blocking
from kelp._broker.core import Session
from kelp._broker.postgres import PostgresStore, store_for
from kelp._broker.postgres._pipeline import MAX_BYTES, MAX_COUNT, Publisher
from kelp._envelope import Delivery, Envelope
from kelp._options import integer_option, seconds_option
from kelp.exceptions import InvalidURL, OperationalError
from kelp.transport._session_channel import SessionChannel, SessionTransport
from kelp.transport.base import DEFAULT_IMPLEMENTS, Implements, package_version
from kelp.url import URL

__all__ = ["PostgresChannel", "PostgresTransport", "conninfo"]

T = TypeVar("T")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


#: Session calls that neither read nor change what earlier publishes stored: they do not wait for them.
_UNORDERED = frozenset({Session.ack, Session.reject, Session.recover, Session.close_channel})
_TRUE = frozenset({"1", "true", "yes", "on"})


class PostgresChannel(SessionChannel):
    """A channel of a PostgreSQL broker: every call that reaches the database runs in a worker thread.
    Publishes go to the connection's pipelined publisher; the calls that read or change the broker wait
    for its earlier publishes first."""

    def __init__(
        self, session: Session[Any], connection_id: int, publisher: Publisher, confirm: bool
    ) -> None:
        super().__init__(session, connection_id)
        self._publisher = publisher
        self._confirm = confirm

    def _call(self, function: Callable[..., T], *args: Any) -> T:
        if self._publisher.unsettled and getattr(function, "__func__", None) not in _UNORDERED:
            run_blocking(self._publisher.settle)
        return super()._call(function, *args)

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        return run_blocking(self._publisher.publish, envelopes, self._confirm)

    def cancel_delayed(self, message_id: str) -> int:
        if self._publisher.unsettled:
            run_blocking(self._publisher.settle)
        return super().cancel_delayed(message_id)


def conninfo(url: URL) -> tuple[str, str]:
    """The libpq connection string and the broker's schema a ``postgresql://`` URL names."""
    from psycopg.conninfo import make_conninfo

    query = url.query
    schema = query.get("schema", "kelp")
    if not _SCHEMA.fullmatch(schema):
        raise InvalidURL(
            f"postgresql:// option schema={schema!r} must be a lower-case SQL name (a-z, 0-9, _; at most 63)"
        )
    options: dict[str, Any] = {}
    if "connect_timeout" in query:
        timeout = seconds_option("postgresql", "connect_timeout", query["connect_timeout"], maximum=3600)
        options["connect_timeout"] = max(1, round(timeout))
    if "sslmode" in query:
        if query["sslmode"] not in _SSLMODES:
            raise InvalidURL(f"postgresql:// option sslmode={query['sslmode']!r}: one of {sorted(_SSLMODES)}")
        options["sslmode"] = query["sslmode"]
    for key, value in (
        ("host", url.hostname),
        ("port", url.port),
        ("user", url.userid),
        ("password", url.password),
        ("dbname", url.virtual_host if url.virtual_host not in (None, "", "/") else None),
    ):
        if value is not None:
            options[key] = value
    return make_conninfo("", **options), schema


class PostgresTransport(SessionTransport[Session[PostgresStore]]):
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(delayed_delivery=True)
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {
            "schema",
            "synchronous_commit",
            "connect_timeout",
            "sslmode",
            "confirm_publish",
            "max_unconfirmed",
            "max_unconfirmed_bytes",
            "liveness",
        }
    )

    driver_type: ClassVar[str] = "postgresql"
    driver_name: ClassVar[str] = "psycopg"

    def driver_version(self) -> str:
        return package_version("psycopg")

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ImportError(
                "the postgresql:// transport needs psycopg 3: pip install 'kelp[postgres]'"
            ) from None
        self.conninfo, self.schema = conninfo(url)
        flush = url.query.get("synchronous_commit", "off")
        if flush not in ("on", "off"):
            raise InvalidURL(f"postgresql:// option synchronous_commit={flush!r} must be on or off")
        self.flush_publishes = flush == "on"
        self.liveness = seconds_option("postgresql", "liveness", url.query.get("liveness", 10), zero=True)
        if 0 < self.liveness < 3:
            raise InvalidURL(f"postgresql:// option liveness={self.liveness:g}: 0 (off) or at least 3 s")
        query = url.query
        confirm = str(query.get("confirm_publish", "")).lower() in _TRUE
        self.confirm_publish = confirm or bool(options.get("confirm_publish"))
        self.max_unconfirmed = integer_option(
            "postgresql",
            "max_unconfirmed",
            query.get("max_unconfirmed", options.get("max_unconfirmed", MAX_COUNT)),
            1,
            2**31,
        )
        self.max_unconfirmed_bytes = integer_option(
            "postgresql",
            "max_unconfirmed_bytes",
            query.get("max_unconfirmed_bytes", options.get("max_unconfirmed_bytes", MAX_BYTES)),
            1,
            2**62,
        )
        self._session: Session[PostgresStore] | None = None
        self._publisher: Publisher | None = None

    @property
    def is_connected(self) -> bool:
        # False once its database session is lost (a server restart): the library then reconnects.
        session, publisher = self._session, self._publisher
        return (
            session is not None
            and session.store.owner_alive(self._connection_id)
            and not (publisher is not None and publisher.lost)
        )

    @property
    def session(self) -> Session[PostgresStore]:
        if self._session is None:
            raise OperationalError("the postgresql:// connection is closed")
        return self._session

    def _current_session(self) -> Session[PostgresStore] | None:
        return self._session

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "schema": self.schema,
            "synchronous_commit": self.flush_publishes,
            "liveness": self.liveness,
            "confirm_publish": self.confirm_publish,
            "max_unconfirmed": self.max_unconfirmed,
            "max_unconfirmed_bytes": self.max_unconfirmed_bytes,
        }

    def connect(self, timeout: float | None) -> None:
        if self._session is not None:
            return
        conninfo = self.conninfo
        if timeout is not None and "connect_timeout" not in self.url.query:
            # the connection's own timeout bounds every session its store opens (libpq's minimum is 2 s;
            # psycopg's default, 130 s, would hold a reconnect on a hung server for minutes)
            from psycopg.conninfo import make_conninfo

            conninfo = make_conninfo(conninfo, connect_timeout=max(2, math.ceil(timeout)))
        session = store_for(conninfo, self.schema, self.flush_publishes).session
        self._connection_id = run_blocking(session.connect, self._signal)
        if self.liveness:
            try:
                run_blocking(session.store.keep_alive, self._connection_id, self.liveness)
            except BaseException:
                run_blocking(session.disconnect, self._connection_id)
                raise
        self._publisher = Publisher(session.store, self.max_unconfirmed, self.max_unconfirmed_bytes)
        self._session = session

    def close(self) -> None:
        """Close without waiting for publishes (``Connection.close`` flushes first): what was not
        confirmed stays :meth:`unconfirmed`."""
        session, self._session = self._session, None
        publisher = self._publisher
        if publisher is not None:
            run_blocking(publisher.close)
        if session is not None:
            run_blocking(session.disconnect, self._connection_id)

    def flush(self, timeout: float | None) -> None:
        if self._publisher is not None:
            run_blocking(self._publisher.flush, timeout)

    def unconfirmed(self) -> list[Envelope]:
        return self._publisher.unconfirmed() if self._publisher is not None else []

    def open_channel(self) -> PostgresChannel:
        if self._publisher is None:
            raise OperationalError("the postgresql:// connection is closed")
        return PostgresChannel(self.session, self._connection_id, self._publisher, self.confirm_publish)

    def _settle(self) -> None:
        """Wait for this connection's publishes: what it reads next (claims, stats) sees them."""
        publisher = self._publisher
        if publisher is not None and publisher.unsettled:
            run_blocking(publisher.settle)

    def drain(self, timeout: float | None) -> list[Delivery]:
        if self._session is not None:  # claims see this connection's publishes (closed: drain raises)
            self._settle()
        return super().drain(timeout)

    def _check_alive(self, session: Session[PostgresStore]) -> None:
        if not session.store.owner_alive(self._connection_id):
            raise OperationalError(
                "the postgresql:// connection's database session was lost (a network cut, a terminated "
                "backend, a server restart): its unacked messages went back to their queues"
            )

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        self._settle()
        return super().queue_stats()
