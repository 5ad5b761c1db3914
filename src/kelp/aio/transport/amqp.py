"""``amqp://`` and ``amqps://``: RabbitMQ over AMQP 0-9-1, on kelp's own sans-IO protocol core.

``amqp://user:password@host:port/vhost`` (``amqps://`` or ``ssl=True`` for TLS; ``ssl`` may also be an
:class:`ssl.SSLContext`). The broker routes; this module maps the transport interface onto protocol commands
(:mod:`kelp.amqp`) and a thin I/O driver (a reader thread in the sync API, an ``asyncio.Protocol`` in
``kelp.aio``). Transport options, or URL query options of the same name (a transport option wins; a bad
value raises InvalidURL): ``confirms`` (default True: the channel publishes in confirm mode; False turns
confirms off), ``confirm_publish`` (default False; True: each publish waits for its own confirms),
``max_unconfirmed`` (10,000 messages) and ``max_unconfirmed_bytes`` (32 MiB) bound the outbox,
``heartbeat`` (seconds, 0 = off), ``reply_timeout`` (seconds to wait for a synchronous reply, default 60),
``blocked_timeout`` (seconds any wait of a publish or flush lasts while the broker has blocked the
connection, default 60), ``frame_max``, ``channel_max``.

What happens to a message:

* **publish** writes a whole batch in one write and, by default, returns without waiting for the broker's
  confirms (they are pipelined). A persistent message has left the process when it returns: the kernel has
  sent its bytes (not merely queued them) and the confirms that had arrived were read (a process killed
  with unread bytes resets the connection: its kernel drops what it had not sent and the broker may drop
  what it had not processed; only a confirm makes a message certain). Each written message sits in the
  connection's **outbox** (by channel and sequence number) until ``basic.ack`` / ``basic.nack`` (with
  ``multiple``) settles it; a full outbox (``max_unconfirmed`` / ``max_unconfirmed_bytes``) makes publish
  wait for confirms first. A negative confirm (e.g. a full queue with ``x-overflow: reject-publish``) is
  raised as :class:`~kelp.exceptions.MessageNacked` naming the envelopes by the connection's next publish,
  ``flush`` or close; so are the unconfirmed messages of a channel the broker closed (a publish to a
  missing exchange), with its reply code and error as the cause. ``flush`` waits for every confirm;
  ``unconfirmed()`` is the outbox, which the library publishes again after a reconnect (at-least-once). A
  publish that raises took its messages out of the outbox: the caller owns them again.
* **confirm_publish=True**, and any batch with a ``mandatory`` message, waits for the batch's confirms and
  raises MessageNacked for its own refusals. Unroutable ``mandatory`` messages come back (``basic.return``
  precedes the confirm) and are returned from that same ``publish``. With ``confirms=False`` a publish
  returns once written (no guarantee); returns then arrive later and are handed back by the channel's
  *next* ``publish``.
* **channel errors** (404, 405, 406, 403...) raise the mapped exception and close the AMQP channel, as the
  broker does; the :class:`AmqpChannel` object stays usable: its next operation opens a fresh AMQP
  channel (same id) and re-applies its ``qos``. Consumers of the closed channel are gone with it (the
  library must consume again), and its unacked deliveries were requeued by the broker: settling one of
  them later is ignored with a warning. A refusal of an asynchronous command (a publish to a missing
  exchange without confirms) is raised by the channel's next operation.
* **deliveries** for every consumer of the connection are queued as they arrive and handed out by
  ``drain``; prefetch (``qos``) bounds how many are unacked.
* **acks** are coalesced: ``ack`` records the tag and returns; the channel's pending acks go out together
  in one write (one ``basic.ack`` with ``multiple`` for a run of tags when every older tag of the channel
  is settled, else one frame each) when 64 (or half the prefetch) are pending, before ``drain`` waits,
  before any other command on the connection (so wire order is exactly call order: an ack then a reject
  reach the broker in that order), and at channel or connection close. An ack not yet written when the
  process dies or the connection drops is lost, so that message is redelivered (at-least-once).
* **connection loss** (socket error, missed heartbeats, a broker-side close) fails every waiting call at
  once with :class:`~kelp.exceptions.ConnectionError` and is logged; ``Connection.ensure`` reconnects.
  Unacked deliveries go back to their queues on the broker, flagged redelivered; unconfirmed publishes stay
  in the outbox for the library to publish again.
* **connection.blocked** (a resource alarm) makes publishers wait instead of piling bytes into a socket
  the broker no longer reads; every wait of a publish (for the alarm to clear, for room in the outbox, for
  its confirms) and of ``flush`` gives up after ``blocked_timeout`` with OperationalError, the first
  publish after the alarm included (the broker announces the block only once it sees that publish).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from time import monotonic
from typing import Any, ClassVar

from kelp import amqp
from kelp._envelope import PROPERTY_NAMES, Delivery, Envelope, QueueInfo
from kelp._options import integer_option, seconds_option
from kelp.aio._amqp_io import Driver
from kelp.aio.transport.base import DEFAULT_IMPLEMENTS, Implements, Transport, TransportChannel, kelp_version
from kelp.exceptions import (
    ChannelError,
    ConnectionError,
    ConsumerCancelled,
    MessageNacked,
    OperationalError,
    UsageError,
    channel_error_for,
)
from kelp.routing import EXCHANGE_TYPES, PassThroughTypes
from kelp.url import URL

__all__ = ["AmqpChannel", "AmqpTransport"]

logger = logging.getLogger("kelp.transport.amqp")

#: Delivery tags handed to the library carry the channel's incarnation above this bit, so a tag from a
#: channel the broker closed can never settle a message of the reopened one.
_EPOCH_SHIFT = 48
_TAG_MASK = (1 << _EPOCH_SHIFT) - 1
#: Property name -> index in :class:`kelp.amqp.BasicProperties` (which also holds ``headers`` at 2).
_PROPERTY_INDEX = tuple((name, amqp.BasicProperties._fields.index(name)) for name in PROPERTY_NAMES)
#: Pending acks of a channel are written once this many are recorded (or half its prefetch, if fewer).
_ACK_BATCH = 64
#: Settled tags remembered above a channel's contiguous floor before ``multiple`` acks are given up on
#: (a ``no_ack`` consumer sharing the channel leaves gaps that never close).
_SETTLED_MAX = 4096


class _Reply:
    """A synchronous request's slot in its channel's FIFO: filled with the reply event or an error."""

    __slots__ = ("done", "error", "event")

    def __init__(self) -> None:
        self.done = False
        self.event: amqp.Event | None = None
        self.error: BaseException | None = None


class AmqpChannel(TransportChannel):
    """One AMQP channel, reopened (same id) after the broker closes it over a refused operation."""

    def __init__(self, transport: AmqpTransport, channel_id: int) -> None:
        self._transport = transport
        self.channel_id = channel_id
        self.is_open = True  # the AMQP channel, as far as the reader has seen
        self._closed_by_us = False
        self._epoch = 0
        self._qos: tuple[int, bool] | None = None
        self._confirming = False
        self._unreported: BaseException | None = None
        # mandatory envelopes whose publish waits for their verdict, oldest first (returns are matched here)
        self._mandatory: list[tuple[amqp.Waiter[Envelope], Envelope]] = []
        self._late_returns: list[Envelope] = []
        self.consumers: dict[str, str] = {}  # tag -> queue
        # coalesced acks: broker tags recorded by ``ack``; every tag <= _floor is settled (-1: unknown),
        # _settled holds the settled tags above it
        self._acks: deque[int] = deque()
        self._ack_batch = _ACK_BATCH
        self._floor = 0
        self._settled: set[int] = set()

    # -- plumbing -------------------------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Raise an unreported refusal once; reopen the AMQP channel if the broker closed it."""
        if self._closed_by_us:
            raise UsageError(f"channel {self.channel_id} is closed")
        error, self._unreported = self._unreported, None
        if error is not None:
            raise error
        if not self.is_open:
            await self._transport._reopen(self)

    async def _call(self, produce: Callable[[amqp.Connection, int], bytes]) -> amqp.Event:
        await self._ready()
        return await self._transport._request(self, produce)

    def _on_closed(self, error: ChannelError) -> None:
        """The broker closed this AMQP channel: fail what waits on it; keep the error if nobody did."""
        self.is_open = False
        self._confirming = False
        self.consumers.clear()
        self._acks.clear()  # the broker requeued those deliveries
        # unconfirmed publishes of this channel will never be confirmed: their waiters fail, the rest are
        # reported as refused (by the connection's next publish or flush)
        reported = self._transport._outbox.close_channel(self.channel_id, error)
        self._mandatory.clear()
        if not reported and not self._closed_by_us:
            self._unreported = error

    # -- exchanges and queues -------------------------------------------------------------------------------

    async def declare_exchange(
        self,
        name: str,
        type: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> None:
        args = _table(arguments)
        await self._call(
            lambda c, ch: c.exchange_declare(
                ch,
                name,
                type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=args,
            )
        )

    async def delete_exchange(self, name: str, if_unused: bool) -> None:
        await self._call(lambda c, ch: c.exchange_delete(ch, name, if_unused=if_unused))

    async def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        args = _table(arguments)
        event = await self._call(
            lambda c, ch: c.queue_declare(
                ch,
                name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=args,
            )
        )
        assert isinstance(event, amqp.QueueDeclareOk)
        return QueueInfo(event.queue, event.message_count, event.consumer_count)

    async def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        event = await self._call(
            lambda c, ch: c.queue_delete(ch, name, if_unused=if_unused, if_empty=if_empty)
        )
        assert isinstance(event, amqp.QueueDeleteOk)
        return event.message_count

    async def purge_queue(self, name: str) -> int:
        event = await self._call(lambda c, ch: c.queue_purge(ch, name))
        assert isinstance(event, amqp.QueuePurgeOk)
        return event.message_count

    async def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        args = _table(arguments)
        if kind == "queue":
            await self._call(lambda c, ch: c.queue_bind(ch, destination, source, routing_key, arguments=args))
        else:
            await self._call(
                lambda c, ch: c.exchange_bind(ch, destination, source, routing_key, arguments=args)
            )

    async def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        args = _table(arguments)
        if kind == "queue":
            await self._call(
                lambda c, ch: c.queue_unbind(ch, destination, source, routing_key, arguments=args)
            )
        else:
            await self._call(
                lambda c, ch: c.exchange_unbind(ch, destination, source, routing_key, arguments=args)
            )

    # -- publishing -----------------------------------------------------------------------------------------

    async def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """Write the batch; wait for its confirms only with ``confirm_publish`` or a mandatory message.

        See the module docstring. An envelope is in the connection's outbox from when its bytes are
        written until the broker settles it; if this call raises, its envelopes are not in the outbox.
        """
        transport = self._transport
        await self._ready()
        if not transport.confirms:
            await transport._await_broker(transport._unblocked, None)
            await transport._send(lambda core: self._encode(core, envelopes, None, None))
            returned, self._late_returns = self._late_returns, []
            return returned
        if not self._confirming:
            await transport._request(self, lambda c, ch: c.confirm_select(ch))
            self._confirming = True
        if not transport._has_room():
            await transport._await_broker(transport._has_room, None)
        waiter: amqp.Waiter[Envelope] | None = None
        if transport.confirm_publish or any(envelope.mandatory for envelope in envelopes):
            waiter = amqp.Waiter()
        seqs: list[int] = []
        # a persistent message must have left the process when publish returns (asyncio: buffer drained)
        drain = any(envelope.properties.get("delivery_mode") != 1 for envelope in envelopes)
        try:
            await transport._send(lambda core: self._encode(core, envelopes, waiter, seqs), drain)
            returned, self._late_returns = self._late_returns, []
            if waiter is not None:
                try:
                    await transport._await_broker(lambda: waiter.done, None)
                finally:
                    if self._mandatory:
                        self._mandatory = [m for m in self._mandatory if m[0] is not waiter]
                if waiter.error is not None:
                    raise waiter.error
                returned.extend(waiter.returned)
        except BaseException:
            transport._outbox.forget(self.channel_id, seqs)
            raise
        transport._raise_refused(waiter.nacked if waiter is not None else ())
        return returned

    def _encode(
        self,
        core: amqp.Connection,
        envelopes: Sequence[Envelope],
        waiter: amqp.Waiter[Envelope] | None,
        seqs: list[int] | None,
    ) -> bytes:
        """Encode the batch (under the driver's lock, in wire order); record each in the outbox."""
        channel_id = self.channel_id
        parts = []
        publish = core.basic_publish
        add = self._transport._outbox.add
        for envelope in envelopes:
            body = envelope.body
            seq, data = publish(
                channel_id,
                envelope.exchange,
                envelope.routing_key,
                body,
                _basic_properties(envelope),
                envelope.mandatory,
            )
            parts.append(data)
            if seq is not None and seqs is not None:
                seqs.append(seq)
                add(channel_id, seq, envelope, len(body), waiter)
                if envelope.mandatory and waiter is not None:
                    self._mandatory.append((waiter, envelope))
        return b"".join(parts)

    def _on_return(self, event: amqp.Return) -> None:
        for index, (waiter, candidate) in enumerate(self._mandatory):  # oldest first: the match is it
            if (
                candidate.routing_key == event.routing_key
                and candidate.exchange == event.exchange
                and candidate.body == event.body
            ):
                waiter.returned.append(candidate)
                del self._mandatory[index]  # one return per envelope
                return
        envelope = Envelope(
            event.body,
            _properties(event.properties),
            dict(event.properties.headers or {}),
            event.exchange,
            event.routing_key,
            True,
        )
        self._late_returns.append(envelope)

    # -- consuming ------------------------------------------------------------------------------------------

    async def qos(self, prefetch_count: int, global_: bool) -> None:
        self._qos = (prefetch_count, global_)
        self._ack_batch = min(_ACK_BATCH, max(1, prefetch_count // 2)) if prefetch_count else _ACK_BATCH
        await self._call(lambda c, ch: c.basic_qos(ch, prefetch_count, global_qos=global_))

    async def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        args = _table(arguments)
        event = await self._call(
            lambda c, ch: c.basic_consume(ch, queue, consumer_tag, no_ack=no_ack, arguments=args)
        )
        assert isinstance(event, amqp.ConsumeOk)
        self.consumers[event.consumer_tag] = queue
        return event.consumer_tag

    async def cancel(self, consumer_tag: str) -> None:
        if self.consumers.pop(consumer_tag, None) is None or not self.is_open:
            return  # cancelled by the broker, or gone with its channel
        await self._call(lambda c, ch: c.basic_cancel(ch, consumer_tag))

    async def get(self, queue: str, no_ack: bool) -> Delivery | None:
        event = await self._call(lambda c, ch: c.basic_get(ch, queue, no_ack=no_ack))
        if isinstance(event, amqp.GetEmpty):
            return None
        assert isinstance(event, amqp.GetOk)
        return Delivery(
            self.channel_id,
            "",
            event.delivery_tag | (self._epoch << _EPOCH_SHIFT),
            event.body,
            _properties(event.properties),
            dict(event.properties.headers or {}),
            event.exchange,
            event.routing_key,
            event.redelivered,
            event.message_count,
        )

    def _settleable(self, delivery_tag: int) -> int | None:
        """The broker's tag for a delivery of this incarnation; None (with a warning) for a stale one."""
        if self.is_open and delivery_tag >> _EPOCH_SHIFT == self._epoch:
            return delivery_tag & _TAG_MASK
        logger.warning(
            "delivery %d was received on channel %d before the broker closed it; the broker already "
            "requeued it, so settling it now does nothing (it will be redelivered)",
            delivery_tag & _TAG_MASK,
            self.channel_id,
        )
        return None

    async def ack(self, delivery_tag: int, multiple: bool) -> None:
        """Record the ack; it is written with the channel's next batch (see the module docstring)."""
        tag = self._settleable(delivery_tag)
        if tag is None:
            return
        if multiple:  # written at once, after the pending ones
            await self._transport._send(
                lambda c: self._settle_upto(c.basic_ack(self.channel_id, tag, True), tag)
            )
            return
        acks = self._acks
        acks.append(tag)
        if len(acks) >= self._ack_batch:
            await self._transport._send(_nothing)

    async def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        tag = self._settleable(delivery_tag)
        if tag is None:
            return
        if multiple:
            await self._transport._send(
                lambda c: self._settle_upto(c.basic_nack(self.channel_id, tag, True, requeue), tag)
            )
        else:
            await self._transport._send(
                lambda c: self._settle((tag,), c.basic_reject(self.channel_id, tag, requeue))
            )

    def _settle_upto(self, data: bytes, tag: int) -> bytes:
        """Note that every tag up to ``tag`` is settled (run while ``data`` is produced); return ``data``."""
        if tag > self._floor:
            self._floor = tag
            self._settled = {t for t in self._settled if t > tag}
        return data

    def _settle(self, tags: Iterable[int], data: bytes) -> bytes:
        """Note ``tags`` as settled; advance the contiguous floor over them; return ``data``."""
        if self._floor >= 0:
            settled = self._settled
            settled.update(tags)
            floor = self._floor
            while floor + 1 in settled:
                floor += 1
                settled.remove(floor)
            self._floor = floor
            if len(settled) > _SETTLED_MAX:
                self._floor = -1
                settled.clear()
        return data

    def _ack_frames(self, core: amqp.Connection) -> bytes:
        """Encode the pending acks (called while producing the connection's next write, in wire order).

        The tags up to the settled floor go as one ``basic.ack`` with ``multiple`` (every older tag of the
        channel is settled, so it acks nothing the library still holds); the rest as one frame each.
        """
        acks = self._acks
        tags = [acks.popleft() for _ in range(len(acks))]  # popleft: an ack recorded meanwhile stays
        if not tags or not self.is_open:
            return b""
        tags.sort()
        self._settle(tags, b"")
        channel_id = self.channel_id
        floor = self._floor
        if tags[-1] <= floor:
            return core.basic_ack(channel_id, tags[-1], True)
        parts = []
        above = tags
        if tags[0] <= floor:
            covered = [t for t in tags if t <= floor]
            parts.append(core.basic_ack(channel_id, covered[-1], True))
            above = tags[len(covered) :]
        for tag in above:
            parts.append(core.basic_ack(channel_id, tag, False))
        return b"".join(parts)

    async def recover(self, requeue: bool) -> None:
        await self._call(lambda c, ch: c.basic_recover(ch, requeue))

    async def close(self) -> None:
        if self._closed_by_us:
            return
        self._closed_by_us = True
        self.consumers.clear()
        transport = self._transport
        if self.is_open and transport.is_connected:
            try:
                await transport._request(self, lambda c, ch: c.close_channel(ch), closing=True)
            except OperationalError:
                pass  # the connection is gone: so is the channel
        transport._channels.pop(self.channel_id, None)


class AmqpTransport(Transport):
    """One AMQP 0-9-1 connection to RabbitMQ (see the module docstring)."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (OperationalError, OSError)
    channel_errors: ClassVar[tuple[type[BaseException], ...]] = (ChannelError,)
    native_routing: ClassVar[bool] = True
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {
            "confirms",
            "confirm_publish",
            "max_unconfirmed",
            "max_unconfirmed_bytes",
            "heartbeat",
            "reply_timeout",
            "blocked_timeout",
            "frame_max",
            "channel_max",
        }
    )

    driver_type: ClassVar[str] = "amqp"
    driver_name: ClassVar[str] = "kelp.amqp"
    # RabbitMQ routes: a type kelp does not know (a plugin's x-...) is passed through for the node to judge.
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(
        heartbeats=True, exchange_type=PassThroughTypes(EXCHANGE_TYPES)
    )

    def driver_version(self) -> str:
        return kelp_version()

    def qos_semantics_matches_spec(self, connection: Any) -> bool:
        """RabbitMQ 3.3 to 3.x limits each consumer (not the channel) with a non-global prefetch; older
        and 4.0 and later servers follow the specification, as any other broker is assumed to."""
        properties = self._core.server_properties
        if _text(properties.get("product")) != "RabbitMQ":
            return True
        digits = re.findall(r"\d+", _text(properties.get("version")))[:2]
        if len(digits) < 2:
            return True
        version = (int(digits[0]), int(digits[1]))
        return version < (3, 3) or version >= (4, 0)

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        opts = self.options

        def option(name: str, default: Any) -> Any:  # a transport option wins over the URL's query
            return opts[name] if name in opts else url.query.get(name, default)

        scheme = url.transport
        self.confirms = _flag(option("confirms", True))
        self.confirm_publish = _flag(option("confirm_publish", False))
        self.max_unconfirmed = integer_option(
            scheme, "max_unconfirmed", option("max_unconfirmed", 10_000), 1, 2**31 - 1
        )
        self.max_unconfirmed_bytes = integer_option(
            scheme, "max_unconfirmed_bytes", option("max_unconfirmed_bytes", 32 * 1024 * 1024), 1, 2**62
        )
        self.reply_timeout: float | None = _seconds(scheme, "reply_timeout", option("reply_timeout", 60.0))
        self.blocked_timeout: float | None = _seconds(
            scheme, "blocked_timeout", option("blocked_timeout", 60.0)
        )
        heartbeat = seconds_option(
            scheme,
            "heartbeat",
            opts.get("heartbeat") or url.query.get("heartbeat") or 0,
            zero=True,
            maximum=65535,
        )
        self._core = amqp.Connection(
            url.userid or "guest",
            url.password or "guest",
            url.virtual_host or "/",
            heartbeat=max(1, round(heartbeat)) if heartbeat > 0 else 0,
            frame_max=integer_option(
                scheme, "frame_max", option("frame_max", 131072), amqp.FRAME_MIN_SIZE, 2**32 - 1
            ),
            channel_max=integer_option(scheme, "channel_max", option("channel_max", 2047), 1, 65535),
            auth_mechanism="EXTERNAL" if opts.get("login_method") == "EXTERNAL" else "PLAIN",
        )
        self._driver = Driver(self._core, self._on_event, self._on_lost)
        self._channels: dict[int, AmqpChannel] = {}
        self._replies: dict[int, deque[_Reply]] = {}
        self._deliveries: deque[Delivery] = deque()
        self._cancelled: deque[tuple[int, str, str]] = deque()  # (channel, tag, queue) from basic.cancel
        self._lost: OperationalError | None = None
        self._closing = False
        self._outbox: amqp.Outbox[Envelope] = amqp.Outbox()
        self.blocked: str | None = None

    # -- connection -----------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._lost is None and self._core.is_open and not self._closing

    def _ssl_context(self) -> ssl.SSLContext | None:
        option = self.options.get("ssl")
        if isinstance(option, ssl.SSLContext):
            return option
        if option or self.url.transport == "amqps":
            context = ssl.create_default_context()
            if isinstance(option, Mapping):
                if option.get("cafile"):
                    context.load_verify_locations(option["cafile"])
                if option.get("certfile"):
                    context.load_cert_chain(option["certfile"], option.get("keyfile"))
                if option.get("cert_reqs") == ssl.CERT_NONE:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            return context
        return None

    async def connect(self, timeout: float | None) -> None:
        host = self.url.hostname or "localhost"
        port = self.url.port or (5671 if self.url.transport == "amqps" else 5672)
        where = f"{host}:{port}"
        try:
            await self._driver.connect(host, port, self._ssl_context(), host, timeout)
        except OSError as exc:  # ssl.SSLError included
            await self._driver.close()
            raise ConnectionError(f"cannot connect to AMQP broker at {where}: {exc}") from exc
        opened = await self._driver.wait_for(lambda: self._core.is_open or self._lost, timeout)
        if self._lost is not None:
            await self._driver.close()
            raise self._lost
        if not opened:
            await self._driver.close()
            raise ConnectionError(f"AMQP handshake with {where} did not finish within {timeout} s")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._lost is None and self._core.is_open:
            try:
                await self._driver.send(lambda: self._pending_acks(self._core) + self._core.close())
                await self._driver.wait_for(
                    lambda: self._core.state is amqp.ConnectionState.CLOSED or self._driver.error, 5.0
                )
            except (OSError, amqp.ProtocolError):
                pass
        await self._driver.close()
        if self._lost is None:
            self._lost = OperationalError("the AMQP connection was closed")
        self._channels.clear()

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "server_properties": dict(self._core.server_properties),
            "heartbeat": self._core.heartbeat_interval,
            "frame_max": self._core.frame_max,
            "confirms": self.confirms,
            "confirm_publish": self.confirm_publish,
            "max_unconfirmed": self.max_unconfirmed,
            "max_unconfirmed_bytes": self.max_unconfirmed_bytes,
            "unconfirmed": self._outbox.count,
        }

    # -- the outbox -----------------------------------------------------------------------------------------

    async def flush(self, timeout: float | None) -> None:
        outbox = self._outbox
        try:
            done = await self._await_broker(lambda: not outbox.count, timeout)
        except BaseException:
            self._raise_refused()  # refusals already known are reported before the loss
            raise
        self._raise_refused()
        if not done:
            raise TimeoutError(f"{outbox.count} published messages were not confirmed within {timeout} s")

    def unconfirmed(self) -> list[Envelope]:
        return self._outbox.messages()

    def _has_room(self) -> bool:
        outbox = self._outbox
        return (
            self.blocked is None
            and outbox.count < self.max_unconfirmed
            and outbox.bytes < self.max_unconfirmed_bytes
        )

    def _unblocked(self) -> bool:
        return self.blocked is None

    def _raise_refused(self, own: Sequence[Envelope] = ()) -> None:
        """Raise MessageNacked for ``own`` and every refusal not yet reported (each is reported once)."""
        outbox = self._outbox
        if not own and not outbox.refused:
            return
        refused, closures = outbox.take_refused()
        envelopes = [*own, *refused]
        text = f"the broker refused {len(envelopes)} published messages"
        if own:
            text += f" ({len(own)} of this publish)"
        if closures:
            text += (
                "; the broker closed their channel before confirming them (those published before the"
                f" failing command may have been enqueued all the same): {closures[0]}"
            )
            code = getattr(closures[0], "reply_code", None)
            raise MessageNacked(text, code, envelopes=envelopes) from closures[0]
        raise MessageNacked(text + " (negative confirms)", envelopes=envelopes)

    # -- channels -------------------------------------------------------------------------------------------

    async def open_channel(self) -> AmqpChannel:
        ids: list[int] = []

        def produce(core: amqp.Connection) -> bytes:
            channel_id, data = core.open_channel()
            ids.append(channel_id)
            self._replies[channel_id] = deque([reply])
            return data

        reply = _Reply()
        await self._send(produce)
        channel = AmqpChannel(self, ids[0])
        self._channels[channel.channel_id] = channel
        await self._result(reply)
        return channel

    async def _reopen(self, channel: AmqpChannel) -> None:
        reply = _Reply()

        def produce(core: amqp.Connection) -> bytes:
            _, data = core.open_channel(channel.channel_id)
            self._replies[channel.channel_id] = deque([reply])
            return data

        await self._send(produce)
        await self._result(reply)
        channel._acks.clear()
        channel._floor = 0
        channel._settled.clear()
        channel.is_open = True
        channel._epoch += 1
        logger.info("reopened AMQP channel %d after the broker closed it", channel.channel_id)
        if channel._qos is not None:
            prefetch, global_ = channel._qos
            await self._request(channel, lambda c, ch: c.basic_qos(ch, prefetch, global_qos=global_))

    # -- requests and waiting -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _pending_acks(self, core: amqp.Connection) -> bytes:
        """Every channel's pending acks, encoded (run under the driver's lock, ahead of the next command)."""
        parts = [channel._ack_frames(core) for channel in list(self._channels.values()) if channel._acks]
        return b"".join(parts)

    async def _send(self, produce: Callable[[amqp.Connection], bytes], drain: bool = False) -> None:
        """Write ``produce``'s bytes, preceded by the pending acks of every channel, in one write.

        With ``drain``, return only once the bytes are handed to the kernel (asyncio: the transport's write
        buffer drained; the sync driver always writes before returning).
        """
        self._check()
        core = self._core
        try:
            await self._driver.send(lambda: self._pending_acks(core) + produce(core), drain)
        except amqp.LocalProtocolError as exc:
            self._check()
            raise ChannelError(f"cannot send this command: {exc}") from exc
        except (OSError, amqp.ProtocolError) as exc:
            self._check()
            raise ConnectionError(f"AMQP connection lost while writing: {exc}") from exc

    async def _request(
        self,
        channel: AmqpChannel,
        produce: Callable[[amqp.Connection, int], bytes],
        closing: bool = False,
    ) -> amqp.Event:
        """Send a synchronous command on ``channel`` and wait for its reply (in the channel's FIFO)."""
        reply = _Reply()
        channel_id = channel.channel_id

        def enqueue(core: amqp.Connection) -> bytes:
            data = produce(core, channel_id)
            replies = self._replies.setdefault(channel_id, deque())
            if closing:  # the core forgets replies owed on a closing channel: so do we
                for owed in replies:
                    owed.error = ChannelError(f"channel {channel_id} was closed by this client")
                    owed.done = True
                replies.clear()
            replies.append(reply)
            return data

        await self._send(enqueue)
        return await self._result(reply)

    async def _result(self, reply: _Reply) -> amqp.Event:
        done = await self._driver.wait_for(lambda: reply.done or self._lost, self.reply_timeout)
        if reply.done:
            if reply.error is not None:
                raise reply.error
            assert reply.event is not None
            return reply.event
        self._check()
        assert not done
        error = ConnectionError(f"the broker did not answer within {self.reply_timeout} s")
        self._on_lost(error)
        await self._driver.close()
        raise error

    async def _await_broker(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (confirms arrived, the alarm cleared); False after ``timeout`` s.

        While the broker blocks the connection (``connection.blocked``) the wait is bounded by
        ``blocked_timeout`` too, then raises OperationalError; a lost connection raises its error.
        """
        if predicate():
            return True
        deadline = None if timeout is None else monotonic() + timeout
        blocked_until: float | None = None
        wait_for = self._driver.wait_for
        while True:
            now = monotonic()
            left = None if deadline is None else max(0.0, deadline - now)
            if self.blocked is None:
                blocked_until = None
                await wait_for(lambda: predicate() or self.blocked is not None or self._lost, left)
            else:
                if blocked_until is None:
                    logger.warning("the broker blocked this connection (%s); publish waits", self.blocked)
                    blocked_until = None if self.blocked_timeout is None else now + self.blocked_timeout
                if blocked_until is not None:
                    left = blocked_until - now if left is None else min(left, blocked_until - now)
                await wait_for(lambda: predicate() or self.blocked is None or self._lost, left)
            if predicate():
                return True
            self._check()
            now = monotonic()
            if self.blocked is not None and blocked_until is not None and now >= blocked_until:
                raise OperationalError(
                    f"the broker kept this connection blocked ({self.blocked}) for {self.blocked_timeout} s"
                )
            if deadline is not None and now >= deadline:
                return False

    # -- events (run by the driver: the reader thread under its lock, or the event loop) ------------------

    def _on_lost(self, exc: BaseException) -> None:
        if self._lost is not None:
            return
        if isinstance(exc, OperationalError):
            error = exc
        elif isinstance(exc, amqp.RemoteProtocolError):
            error = ConnectionError(f"AMQP protocol error from the broker: {exc}", exc.reply_code)
        else:
            error = ConnectionError(f"AMQP connection to {self.url.as_uri()} lost: {exc}")
        self._lost = error
        if not self._closing:
            logger.warning("%s", error)
        self._fail_waiters(error)

    def _fail_waiters(self, error: BaseException) -> None:
        for replies in self._replies.values():
            for reply in replies:
                reply.error = error
                reply.done = True
            replies.clear()
        self._outbox.fail_waiters(error)  # the messages stay: unconfirmed() hands them to the library

    def _on_event(self, event: amqp.Event) -> None:
        if isinstance(event, amqp.Deliver):
            channel = self._channels.get(event.channel)
            epoch = channel._epoch if channel is not None else 0
            props = event.properties
            self._deliveries.append(
                Delivery(
                    event.channel,
                    event.consumer_tag,
                    event.delivery_tag | (epoch << _EPOCH_SHIFT),
                    event.body,
                    _properties(props),
                    dict(props.headers) if props.headers else {},
                    event.exchange,
                    event.routing_key,
                    event.redelivered,
                )
            )
            return
        if isinstance(event, amqp.Confirmed):
            self._outbox.settle(event.channel, event.delivery_tags, event.ack)
            return
        if isinstance(event, amqp.Return):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_return(event)
            return
        if isinstance(event, amqp.ChannelClosed):
            self._on_channel_closed(event)
            return
        if isinstance(event, amqp.ConnectionClosed):
            if event.by_peer:
                self._on_lost(
                    ConnectionError(
                        f"the broker closed the connection: {event.reply_code} {event.reply_text}",
                        event.reply_code,
                    )
                )
            else:
                self._on_lost(OperationalError("the AMQP connection was closed"))
            return
        if isinstance(event, amqp.ConnectionBlocked):
            self.blocked = event.reason or "blocked"
            logger.warning("the broker blocked this connection: %s", self.blocked)
            return
        if isinstance(event, amqp.ConnectionUnblocked):
            self.blocked = None
            logger.info("the broker unblocked this connection")
            return
        if isinstance(event, amqp.ConsumerCancelled):
            channel = self._channels.get(event.channel)
            queue = channel.consumers.pop(event.consumer_tag, None) if channel is not None else None
            if queue is not None:  # reported by the next drain(), after the deliveries that came before it
                self._cancelled.append((event.channel, event.consumer_tag, queue))
            return
        if isinstance(event, amqp.ConnectionOpened | amqp.Heartbeat | amqp.ChannelFlow):
            return
        channel_id = getattr(event, "channel", None)
        replies = self._replies.get(channel_id) if channel_id is not None else None
        if replies:
            reply = replies.popleft()
            reply.event = event
            reply.done = True

    def _on_channel_closed(self, event: amqp.ChannelClosed) -> None:
        replies = self._replies.pop(event.channel, None)
        channel = self._channels.get(event.channel)
        if not event.by_peer or (channel is not None and channel._closed_by_us):
            # the answer to our own close (even if the broker closed it first): the only reply still owed
            for reply in replies or ():
                reply.event = event
                reply.done = True
            if channel is not None:
                channel.is_open = False
            return
        error = channel_error_for(event.reply_code, event.reply_text)
        if replies:
            for reply in replies:
                reply.error = error
                reply.done = True
        if channel is not None:
            channel._on_closed(error)
            if replies:
                channel._unreported = None
            logger.info("the broker closed channel %d: %s", event.channel, error)

    # -- deliveries -----------------------------------------------------------------------------------------

    async def drain(self, timeout: float | None) -> list[Delivery]:
        deliveries = self._deliveries
        if not deliveries:
            if self._lost is None and any(channel._acks for channel in list(self._channels.values())):
                await self._send(_nothing)  # let the broker refill the prefetch windows while we wait
            await self._driver.wait_for(lambda: deliveries or self._cancelled or self._lost, timeout)
        out = []
        channels = self._channels
        while deliveries:
            delivery = deliveries.popleft()
            channel = channels.get(delivery.channel_id)
            if (
                channel is not None
                and channel.is_open
                and delivery.delivery_tag >> _EPOCH_SHIFT == channel._epoch
            ):
                out.append(delivery)
        if out:
            return out
        self._check()
        while self._cancelled:
            channel_id, tag, queue = self._cancelled.popleft()
            channel = channels.get(channel_id)
            if channel is not None and channel.is_open:
                raise ConsumerCancelled(
                    f"the broker cancelled consumer {tag} of queue '{queue}' (deleted?)", tag, channel_id
                )
        raise TimeoutError("no message arrived within the timeout")


def _nothing(core: amqp.Connection) -> bytes:
    return b""


def _table(arguments: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(arguments) if arguments else None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _seconds(scheme: str, name: str, value: Any) -> float | None:
    return None if value is None else seconds_option(scheme, name, value)


def _basic_properties(envelope: Envelope) -> amqp.BasicProperties:
    p = envelope.properties
    timestamp = p.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, int):
        timestamp = int(timestamp.timestamp() if isinstance(timestamp, datetime) else timestamp)
    return amqp.BasicProperties(
        p.get("content_type"),
        p.get("content_encoding"),
        envelope.headers or None,
        p.get("delivery_mode"),
        p.get("priority"),
        p.get("correlation_id"),
        p.get("reply_to"),
        p.get("expiration"),
        p.get("message_id"),
        timestamp,
        p.get("type"),
        p.get("user_id"),
        p.get("app_id"),
        p.get("cluster_id"),
    )


def _properties(props: amqp.BasicProperties) -> dict[str, Any]:
    out = {}
    for name, index in _PROPERTY_INDEX:
        value = props[index]
        if value is not None:
            out[name] = value
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
