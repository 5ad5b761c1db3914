"""What a redis:// connection writes to Redis, in order, on its one pipe: script calls, publishes
(buffered transient ones, quiet ones confirmed later, or ones that wait for their reply) and batched acks;
the confirms read back (refusals are raised as MessageNacked by the next publish, flush or close), and the
dead letters the broker script leaves in its outbox, rewritten and routed here. See kelp.aio.transport.redis
for the whole story of a message."""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from kelp._broker.malformed import Malformed, malformed_tables
from kelp._broker.queue_args import dead_letter, expiration_ms
from kelp._broker.redis.codec import decode_meta, encode_meta, headers_canon
from kelp._broker.redis.script import FUNCTION, SHA, SOURCE
from kelp._broker.redis.ticker import AsyncLinger as Linger  # async-only
from kelp._broker.redis.ticker import AsyncTicker as Ticker  # async-only

# sync-only: from kelp._broker.redis.ticker import ThreadLinger as Linger
# sync-only: from kelp._broker.redis.ticker import ThreadTicker as Ticker
from kelp._envelope import Envelope, is_persistent
from kelp._options import integer_option, seconds_option
from kelp.aio._backend import Signal, monotonic
from kelp.aio.transport._redis_common import (
    _PREFIX,
    _TRUE,
    CLIENT_CHECK,
    MAX_UNCONFIRMED,
    MAX_UNCONFIRMED_BYTES,
    PUBLISH_ARGS,
    PUBLISH_BATCH,
    PUBLISH_CHUNK,
    _Lost,
    _mapped,
    _positive,
    _text,
)
from kelp.aio.transport._redis_pipe import CALL, PUBLISH, Pipe, Slot
from kelp.aio.transport.base import Transport
from kelp.exceptions import MessageNacked, OperationalError, UsageError

if TYPE_CHECKING:
    from kelp.aio.transport._redis_channel import RedisChannel

logger = logging.getLogger("kelp.transport.redis")


def _dead_letter_args(entry: list[Any], now: float) -> tuple[Any, ...]:
    """The publish arguments that route one outbox entry (a dead letter) with its rewritten headers; a
    malformed message is dead-lettered as kelp._broker.malformed says."""
    entry_id, queue, reason, exchange, has_key, key, body, meta = entry
    try:
        properties, headers, origin, routing_key = decode_meta(meta)
    except Malformed as exc:
        properties, headers = malformed_tables(str(exc), {"meta": meta})
        origin = routing_key = ""
    result = dead_letter(
        headers,
        properties,
        queue=_text(queue),
        reason=_text(reason),
        exchange=origin,
        routing_key=routing_key,
        now=now,
    )
    if result is None:
        # A dead-letter cycle: RabbitMQ drops the message; "x" removes it from the outbox only.
        return ("", "", "", "x", 0, "", b"", b"", entry_id, "", "")
    new_headers, new_properties = result
    target = _text(exchange)
    target_key = _text(key) if has_key else routing_key
    priority = new_properties.get("priority")
    return (
        target,
        target_key,
        headers_canon(new_headers),
        "",
        priority if type(priority) is int else 0,
        "",
        body,
        encode_meta(new_properties, new_headers, target, target_key),
        entry_id,
        "",
        "",
    )


class RedisSender(Transport):
    """The connection's state, and everything it writes to Redis (see the module docstring)."""

    def __init__(self, url: Any, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        query = url.query
        prefix = query.get("prefix", "kelp")
        if not _PREFIX.fullmatch(prefix):
            raise UsageError(f"redis:// prefix must be 1-64 of A-Z a-z 0-9 _ . - characters, not {prefix!r}")
        self.prefix = prefix
        self._key = "{" + prefix + "}:"
        self._outbox_key = self._key + "outbox"
        scheme = url.transport
        liveness = seconds_option(scheme, "liveness", query.get("liveness", options.get("liveness", 10.0)))
        self.liveness = liveness
        self._beat_interval = min(CLIENT_CHECK, liveness / 4)
        self._socket_timeout = seconds_option(scheme, "socket_timeout", query.get("socket_timeout", 30.0))
        self._db = integer_option(scheme, "database (the URL's path)", url.path or "0", 0, 2**31 - 1)
        confirm = str(query.get("confirm_publish", "")).lower() in _TRUE
        self.confirm_publish = confirm or bool(options.get("confirm_publish"))
        self.max_unconfirmed = _positive(query, options, "max_unconfirmed", MAX_UNCONFIRMED)
        self.max_unconfirmed_bytes = _positive(query, options, "max_unconfirmed_bytes", MAX_UNCONFIRMED_BYTES)
        #: Exchanges this connection saw exist: a publish to any other waits for the script's answer, so
        #: a missing exchange raises NotFound from that publish.
        self.exchanges: set[str] = {""}
        #: Transient publishes not written yet (the fast path): their envelopes and script arguments.
        self._buffer: list[Envelope] = []
        self._buffer_args: list[Any] = []
        self._buffer_lock = threading.Lock()  # the publisher appends, the linger timer takes
        self._linger: Linger | None = None
        #: Refusals read from the replies of pipelined publishes, raised by the next publish/flush/close.
        self._refused: list[tuple[str, list[Envelope]]] = []
        self._dead_letters = False  # a reply said dead letters wait in the broker's outbox
        self.connection_id = secrets.token_hex(8)
        #: Claimed entries whose meta kelp cannot read: (queue, suffix, id, no_ack, problem); see quarantine.
        self.malformed: list[tuple[str, str, bytes, bool, str]] = []
        self._client: Any = None
        self._pipe: Pipe | None = None
        #: How the pipe calls the script: its function (Redis >= 7), or else EVALSHA.
        self._script: tuple[str, str] = ("FCALL", FUNCTION)
        self._lost = False
        self._channels: dict[int, RedisChannel] = {}
        self._next_channel = 1
        self._acks: dict[tuple[str, str], list[bytes]] = {}  # (queue, stream suffix) -> entry ids
        self.pending_acks = 0
        self._signal = Signal()
        #: When the script last said something becomes due (monotonic), for drain's wait.
        self._next_sweep: float | None = None
        self._ticker: Ticker | None = None
        # (channel id, consumer tag, queue) of consumers whose queue was deleted, not yet reported
        self._cancelled: list[tuple[int, str, str]] = []
        self._client_check = True  # off when the server refuses CLIENT LIST

    @property
    def is_connected(self) -> bool:
        pipe = self._pipe
        return self._client is not None and not self._lost and pipe is not None and pipe.broken is None

    def _require(self) -> Any:
        if self._client is None:
            raise OperationalError("the redis:// connection is closed")
        if self._lost:
            raise OperationalError(
                "the redis:// connection missed its heartbeats for longer than liveness "
                f"({self.liveness}s) and was released: its unacked messages were redelivered; reconnect"
            )
        return self._client

    def _require_pipe(self) -> Pipe:
        self._require()
        pipe = self._pipe
        assert pipe is not None
        if pipe.broken is not None:
            raise OperationalError(f"redis: the connection was lost ({pipe.broken}); reconnect")
        return pipe

    # --- calling the script -------------------------------------------------------------------------

    async def call(self, op: str, *args: Any) -> Any:
        """Run one operation of the broker script, written after this connection's buffered publishes
        and acks on the pipe (so it sees them), and return its reply."""
        try:
            return (await self._send([(op, args)]))[0]
        except _Lost:
            self._lost = True
            self._require()  # raises, with the explanation
            raise

    async def flush(self, timeout: float | None = None) -> None:
        """The barrier: write the buffered publishes and acks, then read the reply of every earlier
        publish. Raises MessageNacked for refusals not reported yet, TimeoutError when ``timeout``
        passes first (the rest stays in the outbox), OperationalError when the connection is gone."""
        if self._client is None:
            if self._refused:
                self._raise_refused()
            return
        pipe = self._require_pipe()
        deadline = None if timeout is None else monotonic() + timeout
        await self._send([])
        with _mapped():
            await pipe.wait_all(deadline)
        if self._dead_letters:
            self._dead_letters = False
            await self.flush_outbox()
        self._raise_refused()

    def unconfirmed(self) -> list[Envelope]:
        """Written but not confirmed (the pipe's outbox), then the transient publishes not yet written."""
        pipe = self._pipe
        return (pipe.unconfirmed() if pipe is not None else []) + list(self._buffer)

    async def send_buffered(self) -> None:
        """Write the buffered transient publishes and acks now, without waiting for replies."""
        await self._send([])

    async def _flush_publishes(self) -> None:
        # The linger timer (another thread in the sync API): publishes only, acks belong to their thread.
        if self._buffer and self.is_connected:
            await self._send([], acks=False)

    def _take_buffer(self, pipe: Pipe) -> list[tuple[list[bytes], Slot | None]]:
        """The buffered transient publishes as quiet script calls (called under the write lock)."""
        if not self._buffer:
            return []
        with self._buffer_lock:
            envelopes, self._buffer = self._buffer, []
            args, self._buffer_args = self._buffer_args, []
        return self._quiet_publishes(pipe, envelopes, args)

    def _quiet_publishes(
        self, pipe: Pipe, envelopes: list[Envelope], args: list[Any]
    ) -> list[tuple[list[bytes], Slot | None]]:
        commands: list[tuple[list[bytes], Slot | None]] = []
        for i in range(0, len(envelopes), PUBLISH_CHUNK):
            chunk = envelopes[i : i + PUBLISH_CHUNK]
            slot = Slot(PUBLISH, chunk, sum(len(envelope.body) for envelope in chunk))
            packed = pipe.wire.pack(
                *self._script,
                1,
                self._key,
                "opub",
                self.connection_id,
                len(chunk),
                *args[i * PUBLISH_ARGS : (i + len(chunk)) * PUBLISH_ARGS],
            )
            commands.append((packed, slot))
        return commands

    async def _send(self, calls: list[tuple[str, Sequence[Any]]], acks: bool = True) -> list[Any]:
        """Write the buffered publishes, the buffered acks (unless ``acks`` is false), then ``calls``
        (script operations) on the pipe, in that order; read and return the calls' replies."""
        pipe = self._require_pipe()
        slots = [Slot(CALL) for _ in calls]

        def quiet() -> list[tuple[list[bytes], Slot | None]]:
            commands = self._take_buffer(pipe)
            if acks and self.pending_acks:
                commands += self._ack_commands(pipe)
            return commands

        with _mapped():
            await pipe.send(
                quiet,
                [
                    (pipe.wire.pack(*self._script, 1, self._key, op, *args), slot)
                    for (op, args), slot in zip(calls, slots)
                ],
            )
            results = [await pipe.wait(slot) for slot in slots]
        for result in results:
            if isinstance(result, Exception):
                with _mapped():
                    raise result
        if self._dead_letters:
            self._dead_letters = False
            await self.flush_outbox()
        return results

    def _on_confirm(self, window: list[Slot], reply: Any) -> None:
        """A confirm of the quiet publishes ``window``: remember what the broker refused, to raise it
        from the next publish, flush or close."""
        if int(reply[1]):
            self._dead_letters = True
        for raw in reply[2:]:
            k, nacked, refused, missing = json.loads(raw)
            envelopes = window[int(k) - 1].envelopes
            missing = missing or []  # an empty Lua table is encoded as {}
            for name in missing:
                self.exchanges.discard(name)
            reasons = [f"no exchange {sorted(set(missing))}"] if missing else []
            if refused:
                reasons.append(f"queue(s) {sorted(set(refused))} full (x-overflow reject-publish)")
            self._refused.append(("; ".join(reasons), [envelopes[int(index)] for index in nacked or []]))

    def _raise_refused(self) -> None:
        if not self._refused:
            return
        refused, self._refused = self._refused, []
        reasons = sorted({reason for reason, _ in refused})
        envelopes = [envelope for _, batch in refused for envelope in batch]
        raise MessageNacked(
            f"{len(envelopes)} published message(s) not enqueued: {'; '.join(reasons)}", envelopes=envelopes
        )

    async def _call_unbuffered(self, op: str, *args: Any) -> Any:
        """One script call on its own connection of the pool (the heartbeat's, the dead letters'): it
        neither waits behind nor reorders the pipe."""
        client = self._require()
        with _mapped():
            try:
                return await client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)
            except NoScriptError:
                return await self._reload_and_call(client, op, args)

    async def _reload_and_call(self, client: Any, op: str, args: tuple[Any, ...]) -> Any:
        # Redis restarted (or SCRIPT FLUSH): scripts are not persisted, so load it again.
        await client.execute_command("SCRIPT", "LOAD", SOURCE)
        return await client.execute_command("EVALSHA", SHA, 1, self._key, op, *args)

    # --- acks ---------------------------------------------------------------------------------------

    def queue_ack(self, queue: str, suffix: str, entry_id: bytes) -> None:
        key = (queue, suffix)
        ids = self._acks.get(key)
        if ids is None:
            self._acks[key] = [entry_id]
        else:
            ids.append(entry_id)
        self.pending_acks += 1

    def _ack_commands(self, pipe: Pipe) -> list[tuple[list[bytes], Slot | None]]:
        acks, self._acks = self._acks, {}
        self.pending_acks = 0
        # One script call (XACK + XDEL per stream, and each queue's count of acks), its reply unread.
        args: list[Any] = []
        for (queue, suffix), ids in acks.items():
            args += (queue, suffix, len(ids), *ids)
        return [(pipe.wire.pack(*self._script, 1, self._key, "ack", *args), None)]

    # --- publishing and dead letters ---------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Write the script call routing and storing the batch (one per chunk) and return without reading
        its reply (see the module docstring); transient messages may wait in the buffer instead. With
        ``confirm_publish``, a ``mandatory`` message, or an exchange this connection has not seen exist,
        wait for the reply: refusals raise MessageNacked, unroutable mandatory messages are returned."""
        if not envelopes:
            return []
        pipe = self._require_pipe()
        self._raise_refused()
        envelopes = list(envelopes)
        args: list[Any] = []
        exchanges = self.exchanges
        wait = self.confirm_publish
        transient = True
        for envelope in envelopes:
            if envelope.mandatory or envelope.exchange not in exchanges:
                wait = True
            properties = envelope.properties
            if is_persistent(properties):
                transient = False
            ttl = expiration_ms(properties)
            args += (
                envelope.exchange,
                envelope.routing_key,
                headers_canon(envelope.headers),
                "1" if envelope.mandatory else "",
                int(properties.get("priority") or 0),
                "" if ttl is None else ttl,
                envelope.body,
                encode_meta(properties, envelope.headers, envelope.exchange, envelope.routing_key),
                "",
                "" if envelope.due is None else math.ceil(envelope.due * 1000),  # never early
                "" if envelope.due is None else properties.get("message_id") or "",
            )
        if transient and not wait:
            with self._buffer_lock:
                first = not self._buffer
                self._buffer += envelopes
                self._buffer_args += args
                full = len(self._buffer) >= PUBLISH_BATCH
            if full:
                await self._send([], acks=False)
            elif first and self._linger is not None:
                self._linger.arm()
            return []
        if not wait:
            quiet = self._quiet_publishes(pipe, envelopes, args)
            with _mapped():
                await pipe.make_room(len(envelopes), sum(len(envelope.body) for envelope in envelopes))
            self._raise_refused()

            def commands() -> list[tuple[list[bytes], Slot | None]]:
                taken = self._take_buffer(pipe)
                if self.pending_acks:
                    taken += self._ack_commands(pipe)
                return taken + quiet

            with _mapped():
                await pipe.send(commands, [])
            return []
        own = [
            (
                pipe.wire.pack(
                    *self._script,
                    1,
                    self._key,
                    "publish",
                    len(chunk),
                    *args[i * PUBLISH_ARGS : (i + len(chunk)) * PUBLISH_ARGS],
                ),
                Slot(CALL, chunk),
            )
            for i, chunk in (
                (i, envelopes[i : i + PUBLISH_CHUNK]) for i in range(0, len(envelopes), PUBLISH_CHUNK)
            )
        ]
        with _mapped():
            await pipe.send(lambda: self._take_buffer(pipe), own)
            results = [await pipe.wait(slot) for _, slot in own]
        returned: list[Envelope] = []
        refused: list[Envelope] = []
        reasons: set[str] = set()
        failure: Exception | None = None
        for (_, slot), result in zip(own, results):
            if isinstance(result, Exception):
                failure = failure or result
                continue
            returned_indexes, refused_names, _, _, _, nacked = result
            returned += (slot.envelopes[int(index)] for index in returned_indexes)
            refused += (slot.envelopes[int(index)] for index in nacked)
            reasons.update(_text(name) for name in refused_names)
            if int(result[2]):
                self._dead_letters = True
        if failure is not None:
            with _mapped():
                raise failure
        exchanges.update(envelope.exchange for envelope in envelopes)  # the script checked they exist
        if self._dead_letters:
            self._dead_letters = False
            await self.flush_outbox()
        if refused:
            raise MessageNacked(
                f"queue(s) {sorted(reasons)} full (x-overflow reject-publish): message not enqueued there",
                envelopes=refused,
            )
        return returned

    async def flush_outbox(self) -> None:
        """Rewrite and route the dead letters waiting in the outbox (any connection may do it, once each)."""
        for _ in range(100):
            raw = await self._call_unbuffered("outbox", 100)
            if not raw:
                return
            args: list[Any] = []
            count = 0
            now = time.time()
            for i in range(0, len(raw), 8):
                entry = raw[i : i + 8]
                try:
                    args += _dead_letter_args(entry, now)
                except Exception:
                    # Whatever is wrong with it, one entry never blocks the outbox: "x" removes it.
                    logger.exception("kelp: dropped an unreadable dead letter %r from the outbox", entry[0])
                    args += ("", "", "", "x", 0, "", b"", b"", entry[0], "", "")
                count += 1
            await self._call_unbuffered("publish", count, *args)
