# Generated from src/kelp/aio/transport/redis.py by scripts/unasync.py; do not edit.
"""``redis://`` and ``rediss://``: kelp's broker on Redis streams, with RabbitMQ's semantics.

``redis://[user:password@]host[:port][/db][?prefix=kelp&liveness=10]`` (``rediss://`` for TLS). Every
declaration (exchanges, queues, bindings, arguments) is stored in Redis under the prefix, so all processes
sharing a prefix see one topology; different prefixes are separate brokers.

What happens to a message:

* **publish** routes and stores in one server-side Lua function (:mod:`kelp._broker.redis.script`): the
  matched queues get their copies atomically, or none does. Every operation of the connection goes, in
  order, through one Redis connection, the *pipe* (:mod:`kelp.transport._redis_pipe`). A persistent
  message's call is written to the socket before ``publish`` returns, with ``CLIENT REPLY OFF`` (so Redis
  reads a killed publisher's socket to the end: nothing written is lost); a ``confirm`` call settles the
  outbox: before the next operation that needs a reply, every 128 KiB, when the outbox is full
  (``max_unconfirmed`` messages, ``max_unconfirmed_bytes`` of bodies), by :meth:`RedisTransport.flush`
  and at close. A refusal it reports (a full ``reject-publish`` queue, an exchange deleted meanwhile) is
  raised as :class:`~kelp.exceptions.MessageNacked` naming the messages, by the next publish, flush or
  close. A
  transient message may wait up to ``LINGER`` in the connection (``PUBLISH_BATCH`` are written together):
  the fast path. With ``confirm_publish`` (URL query or transport option), and always for a ``mandatory``
  message or one to an exchange this connection has not seen exist, ``publish`` waits for its own reply:
  Redis has the message (in memory, and on disk as its persistence says: see ``docs/transports.md``),
  refusals raise and unroutable ``mandatory`` messages are returned. After a lost connection,
  :meth:`RedisTransport.unconfirmed` is what the library publishes again (at-least-once).
* **queues** are Redis streams (one per priority level, plus one per level for requeued messages, which
  go first) read through one consumer group. A delivery moves the entry into the group's pending list
  under this connection's name in the same script that reads it, so there is no moment when a message is
  neither in the queue nor pending: a crash never loses one.
* **ack** removes the entry (XACK + XDEL). Acks are sent in batches, with the connection's next operation
  (its next drain, publish, get...) or when the batch is full; a process that dies before that gets those
  messages redelivered (at-least-once, as in AMQP). **reject** / **requeue** / channel close put entries
  back at the head of their queue, flagged ``redelivered``; ``reject(requeue=False)`` dead-letters.
* **liveness**: every connection refreshes a heartbeat (an asyncio task in the async API, a daemon
  thread in the sync one) every ``CLIENT_CHECK`` seconds and checks that the other connections' Redis
  clients are still listed (``CLIENT LIST ID``): one whose client is gone (its process died, its socket
  closed) is released at once: its pending messages are redelivered, flagged, to anyone, its consumers and
  exclusive queues go. A connection silent for ``liveness`` seconds (default 10) with its client still
  connected (a hung process) is released the same way by the next live connection to beat. A consumer busy
  for minutes keeps its messages as long as its process beats; with asyncio that means its callbacks must
  not block the event loop that long.
* **prefetch** is honoured exactly: a claim never reads more than the consumers' free windows.
* **drain** waits with a bounded ``XREAD BLOCK`` on the consumed streams (never more than half a second
  per call, and never past the next time something becomes due), so timeouts are respected and the async
  API never blocks its event loop.
* **delayed** messages (``countdown``/``eta``) are routed at publish and held per queue in a sorted set by
  due time; the script moves them to the queue's streams when a claim, get or heartbeat finds them due
  (a draining connection wakes for the next due time), so they are never delivered early and cost no
  prefetch slot. ``cancel_delayed`` removes them by message id. They persist as the rest of the data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from redis import Redis
from redis.exceptions import ResponseError

from kelp._broker.core.channel import MAX_CLAIM as MAX_CLAIM
from kelp._broker.redis.codec import decode_arguments
from kelp._broker.redis.script import FUNCTION, LIBRARY, SHA, SOURCE
from kelp._broker.redis.ticker import ThreadLinger as Linger
from kelp._broker.redis.ticker import ThreadTicker as Ticker
from kelp._broker.redis.wire import ThreadWire as Wire
from kelp._envelope import QueueStats
from kelp.exceptions import OperationalError
from kelp.transport._redis_channel import RedisChannel
from kelp.transport._redis_common import ACK_BATCH as ACK_BATCH
from kelp.transport._redis_common import CLIENT_CHECK as CLIENT_CHECK
from kelp.transport._redis_common import LINGER, _mapped, _text
from kelp.transport._redis_common import MAX_UNCONFIRMED as MAX_UNCONFIRMED
from kelp.transport._redis_common import MAX_UNCONFIRMED_BYTES as MAX_UNCONFIRMED_BYTES
from kelp.transport._redis_common import PUBLISH_ARGS as PUBLISH_ARGS
from kelp.transport._redis_common import PUBLISH_BATCH as PUBLISH_BATCH
from kelp.transport._redis_common import PUBLISH_CHUNK as PUBLISH_CHUNK
from kelp.transport._redis_common import SERVER_TICK as SERVER_TICK
from kelp.transport._redis_common import WAIT_CAP as WAIT_CAP
from kelp.transport._redis_consume import RedisConsuming
from kelp.transport._redis_pipe import CALL, Pipe, Slot
from kelp.transport.base import DEFAULT_IMPLEMENTS, Implements, package_version

__all__ = ["RedisChannel", "RedisTransport"]

logger = logging.getLogger("kelp.transport.redis")


class RedisTransport(RedisConsuming):
    """A redis:// connection: its lifecycle (connect, heartbeats, close) over the parts it is made of:
    :mod:`~kelp.transport._redis_sender` (the pipe, publishing, acks, confirms, dead letters) and
    :mod:`~kelp.transport._redis_consume` (claims and the drain loop); channels are
    :class:`~kelp.transport._redis_channel.RedisChannel`."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {
            "prefix",
            "liveness",
            "socket_timeout",
            "confirm_publish",
            "max_unconfirmed",
            "max_unconfirmed_bytes",
        }
    )

    driver_type: ClassVar[str] = "redis"
    driver_name: ClassVar[str] = "redis"
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(heartbeats=True, delayed_delivery=True)

    def driver_version(self) -> str:
        return package_version("redis")

    def info(self) -> dict[str, Any]:
        return {**super().info(), "prefix": self.prefix, "confirm_publish": self.confirm_publish}

    def connect(self, timeout: float | None) -> None:
        if self._client is not None:
            return
        url = self.url
        ssl_options = self.options.get("ssl")
        ssl_kwargs: dict[str, Any] = {}
        if url.transport == "rediss" or ssl_options:
            ssl_kwargs["ssl"] = True
            if isinstance(ssl_options, Mapping):
                for key, value in ssl_options.items():
                    ssl_kwargs[key if key.startswith("ssl_") else f"ssl_{key}"] = value
        client: Any = Redis(
            host=url.hostname or "localhost",
            port=url.port or 6379,
            db=self._db,
            username=url.userid or None,
            password=url.password or None,
            socket_connect_timeout=timeout,
            socket_timeout=self._socket_timeout,
            protocol=2,
            **ssl_kwargs,
        )
        wire = Wire(client)
        pipe = Pipe(
            wire,
            wire.pack("FUNCTION", "LOAD", "REPLACE", LIBRARY),
            wire.pack("FCALL", FUNCTION, 1, self._key, "confirm", self.connection_id),
            self._on_confirm,
            self.max_unconfirmed,
            self.max_unconfirmed_bytes,
        )
        try:
            with _mapped():
                wire.open()
                # The pipe's connection is this connection's identity: a liveness check that no longer
                # finds its client id in CLIENT LIST releases what it holds (see _check_clients).
                hello = [Slot(CALL) for _ in range(4)]
                pipe.send(
                    list,
                    [
                        (wire.pack("CLIENT", "SETNAME", f"kelp-{self.connection_id}"), hello[0]),
                        (wire.pack("CLIENT", "ID"), hello[1]),
                        (wire.pack("SCRIPT", "LOAD", SOURCE), hello[2]),
                        (wire.pack("FUNCTION", "LOAD", LIBRARY), hello[3]),
                    ],
                )
                for slot in hello[:3]:
                    pipe.wait(slot)
                if isinstance(hello[2].value, Exception):
                    raise hello[2].value
                # CLIENT may be refused (an ACL, an old or managed server): then only missed heartbeats
                # release this connection's messages if its process dies.
                client_id = None if isinstance(hello[1].value, Exception) else int(hello[1].value)
                loaded = pipe.wait(hello[3])
                if isinstance(loaded, ResponseError) and "already exists" not in str(loaded):
                    # Redis < 7 has no functions: every call runs the script (slower: its whole body
                    # runs each time).
                    self._script = ("EVALSHA", SHA)
                    pipe.script_load = wire.pack("SCRIPT", "LOAD", SOURCE)
                    pipe.confirm = wire.pack("EVALSHA", SHA, 1, self._key, "confirm", self.connection_id)
                outbox = client.execute_command(
                    "EVALSHA", SHA, 1, self._key, "init", self.connection_id, self._liveness_ms
                )
                if client_id is not None:
                    client.execute_command("HSET", self._key + "clients", self.connection_id, client_id)
        except BaseException:
            wire.close()
            client.connection_pool.disconnect()
            raise
        self._client = client
        self._pipe = pipe
        self._lost = False
        self._ticker = Ticker(self._beat_interval, self._beat, f"kelp-redis-heartbeat-{self.connection_id}")
        self._ticker.start()
        self._linger = Linger(LINGER, self._flush_publishes, f"kelp-redis-linger-{self.connection_id}")
        if outbox:
            self.flush_outbox()

    @property
    def _liveness_ms(self) -> int:
        return int(self.liveness * 1000)

    def close(self) -> None:
        """Release everything this connection holds (unacked messages go back, flagged) and disconnect.
        Publishes still unconfirmed are waited for (the reap call comes after them on the pipe); a refusal
        found then is raised once the connection is closed."""
        client = self._client
        if client is None:
            return
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
        linger, self._linger = self._linger, None
        if linger is not None:
            linger.stop()
        self._channels.clear()
        try:
            if self.is_connected:
                for _ in range(10_000):  # the first call writes the buffered publishes and acks first
                    if not self.call("reap", self.connection_id):
                        break
        except OperationalError:
            # Redis is unreachable: the other connections release our messages when they find our client
            # gone from CLIENT LIST (or after liveness).
            pass
        finally:
            unconfirmed = len(self.unconfirmed())
            if unconfirmed:  # Connection republishes them after a reconnect, or logs them at close
                logger.debug(
                    "kelp: %d published messages were never confirmed: the connection closed unreachable",
                    unconfirmed,
                )
            self._buffer, self._buffer_args = [], []
            pipe, self._pipe = self._pipe, None
            self._client = None
            self._acks.clear()
            self.pending_acks = 0
            self._signal.set()
            if pipe is not None:
                pipe.wire.close()
            client.connection_pool.disconnect()
        self._raise_refused()

    def open_channel(self) -> RedisChannel:
        self._require()
        channel = RedisChannel(self, self._next_channel)
        self._next_channel += 1
        self._channels[channel.channel_id] = channel
        return channel

    def forget_channel(self, channel: RedisChannel) -> bool:
        return self._channels.pop(channel.channel_id, None) is not None

    def _beat(self) -> None:
        """Heartbeat: stay alive, release dead connections, expire what is due, route dead letters."""
        for _ in range(10):
            outbox, lost, more = self._call_unbuffered("beat", self.connection_id, self._liveness_ms)
            if lost:
                self._lost = True
                self._signal.set()
                return
            if outbox:
                self.flush_outbox()
            if more != 2:
                break
        self._check_clients()

    def _check_clients(self) -> None:
        """Release the connections whose Redis client is gone: their process died (or their socket
        closed), so their unacked messages go back now rather than after ``liveness``. A process that
        is alive but silent keeps its client listed: only its missed heartbeats release it."""
        client = self._require()
        if not self._client_check:
            return
        with _mapped():
            known = client.hgetall(self._key + "clients")
            ids = {int(client_id): _text(conn) for conn, client_id in known.items()}
            if not ids:
                return
            try:
                listed = client.client_list(client_id=list(ids))
            except ResponseError as exc:  # CLIENT LIST ID needs Redis 6.2 and the right to list clients
                logger.warning(
                    "kelp: cannot list redis clients (%s): dead connections wait for liveness", exc
                )
                self._client_check = False
                return
            gone = set(ids) - {int(entry["id"]) for entry in listed}
            for client_id in sorted(gone):
                logger.info("kelp: redis connection %s is gone: releasing what it held", ids[client_id])
                for _ in range(10_000):
                    if not self._call_unbuffered("reap", ids[client_id]):
                        break

    # --- inspection ---------------------------------------------------------------------------------

    def queue_stats(self) -> list[tuple[str, int, int, int]]:
        raw = self.call("stats")
        return [
            QueueStats(_text(raw[i]), *(int(value) for value in raw[i + 1 : i + 8]))
            for i in range(0, len(raw), 8)
        ]

    def list_bindings(self) -> list[tuple[str, str, str, str, dict[str, Any]]]:
        raw = self.call("bindings")
        out = []
        for i in range(0, len(raw), 2):
            kind, destination, routing_key, arguments, *_ = json.loads(raw[i + 1])
            out.append((_text(raw[i]), kind, destination, routing_key, decode_arguments(arguments)))
        return out
