# Generated from src/kelp/aio/transport/amqp.py by scripts/unasync.py; do not edit.
"""``amqp://`` and ``amqps://``: RabbitMQ over AMQP 0-9-1, on kelp's own sans-IO protocol core.

``amqp://user:password@host:port/vhost`` (``amqps://`` or ``ssl=True`` for TLS; ``ssl`` may also be an
:class:`ssl.SSLContext`). The broker routes; this module maps the transport interface onto protocol commands
(:mod:`kelp.amqp`) and a thin I/O driver (a reader thread in the sync API, an ``asyncio.Protocol`` in
``kelp``). Transport options, or URL query options of the same name (a transport option wins; a bad
value raises InvalidURL): ``confirm_publish`` (default True), ``heartbeat`` (seconds, 0 = off),
``reply_timeout`` (seconds to wait for a synchronous reply, default 60), ``blocked_timeout`` (seconds a
publish waits while the broker has blocked the connection, default 60), ``frame_max``, ``channel_max``.

What happens to a message:

* **publish** writes a whole batch in one write. With ``confirm_publish`` (the default) it then waits for
  the broker's confirms of the whole batch at once and returns only when the broker has taken
  responsibility for every message (persistent messages on durable queues are on disk); a negative confirm
  (e.g. a full queue with ``x-overflow: reject-publish``) raises :class:`~kelp.exceptions.MessageNacked`
  after the rest of the batch is settled. Unroutable ``mandatory`` messages come back (``basic.return``
  precedes the confirm) and are returned from that same ``publish``. With ``confirm_publish=False`` a
  publish returns once written (fast, no guarantee); returns then arrive later and are handed back by the
  channel's *next* ``publish``.
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
  Unacked deliveries go back to their queues on the broker, flagged redelivered.
* **connection.blocked** (a resource alarm) makes publishers wait, up to ``blocked_timeout``, instead of
  piling bytes into a socket the broker no longer reads.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from kelp import amqp
from kelp._amqp_io import Driver
from kelp._envelope import PROPERTY_NAMES, Delivery, Envelope, QueueInfo
from kelp._options import integer_option, seconds_option
from kelp.exceptions import (
    ChannelError,
    ConnectionError,
    ConsumerCancelled,
    MessageNacked,
    OperationalError,
    UsageError,
    channel_error_for,
)
from kelp.transport.base import Transport, TransportChannel
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


class _Batch:
    """One confirmed publish: how many confirms are still owed, what was nacked and returned."""

    __slots__ = ("error", "nacked", "remaining", "returned")

    def __init__(self) -> None:
        self.remaining = 0
        self.nacked = 0
        self.returned: list[Envelope] = []
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
        # publisher confirms: sequence number -> (batch, envelope); mandatory envelopes awaiting a verdict
        self._in_flight: dict[int, tuple[_Batch, Envelope]] = {}
        self._late_returns: list[Envelope] = []
        self.consumers: dict[str, str] = {}  # tag -> queue
        # coalesced acks: broker tags recorded by ``ack``; every tag <= _floor is settled (-1: unknown),
        # _settled holds the settled tags above it
        self._acks: deque[int] = deque()
        self._ack_batch = _ACK_BATCH
        self._floor = 0
        self._settled: set[int] = set()

    # -- plumbing -------------------------------------------------------------------------------------------

    def _ready(self) -> None:
        """Raise an unreported refusal once; reopen the AMQP channel if the broker closed it."""
        if self._closed_by_us:
            raise UsageError(f"channel {self.channel_id} is closed")
        error, self._unreported = self._unreported, None
        if error is not None:
            raise error
        if not self.is_open:
            self._transport._reopen(self)

    def _call(self, produce: Callable[[amqp.Connection, int], bytes]) -> amqp.Event:
        self._ready()
        return self._transport._request(self, produce)

    def _on_closed(self, error: ChannelError) -> None:
        """The broker closed this AMQP channel: fail what waits on it; keep the error if nobody did."""
        self.is_open = False
        self._confirming = False
        self.consumers.clear()
        self._acks.clear()  # the broker requeued those deliveries
        reported = False
        for batch, _ in self._in_flight.values():
            if batch.error is None:
                batch.error = error
                reported = True
        self._in_flight.clear()
        if not reported and not self._closed_by_us:
            self._unreported = error

    # -- exchanges and queues -------------------------------------------------------------------------------

    def declare_exchange(
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
        self._call(
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

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        self._call(lambda c, ch: c.exchange_delete(ch, name, if_unused=if_unused))

    def declare_queue(
        self,
        name: str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: Mapping[str, Any] | None,
        passive: bool,
    ) -> QueueInfo:
        args = _table(arguments)
        event = self._call(
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

    def delete_queue(self, name: str, if_unused: bool, if_empty: bool) -> int:
        event = self._call(lambda c, ch: c.queue_delete(ch, name, if_unused=if_unused, if_empty=if_empty))
        assert isinstance(event, amqp.QueueDeleteOk)
        return event.message_count

    def purge_queue(self, name: str) -> int:
        event = self._call(lambda c, ch: c.queue_purge(ch, name))
        assert isinstance(event, amqp.QueuePurgeOk)
        return event.message_count

    def bind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        args = _table(arguments)
        if kind == "queue":
            self._call(lambda c, ch: c.queue_bind(ch, destination, source, routing_key, arguments=args))
        else:
            self._call(lambda c, ch: c.exchange_bind(ch, destination, source, routing_key, arguments=args))

    def unbind(
        self, kind: str, destination: str, source: str, routing_key: str, arguments: Mapping[str, Any] | None
    ) -> None:
        args = _table(arguments)
        if kind == "queue":
            self._call(lambda c, ch: c.queue_unbind(ch, destination, source, routing_key, arguments=args))
        else:
            self._call(lambda c, ch: c.exchange_unbind(ch, destination, source, routing_key, arguments=args))

    # -- publishing -----------------------------------------------------------------------------------------

    def publish(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        transport = self._transport
        self._ready()
        confirm = transport.confirm_publish
        if confirm and not self._confirming:
            transport._request(self, lambda c, ch: c.confirm_select(ch))
            self._confirming = True
        transport._wait_unblocked()
        batch = _Batch()
        in_flight = self._in_flight

        def produce(core: amqp.Connection) -> bytes:
            channel_id = self.channel_id
            parts = []
            publish = core.basic_publish
            for envelope in envelopes:
                seq, data = publish(
                    channel_id,
                    envelope.exchange,
                    envelope.routing_key,
                    envelope.body,
                    _basic_properties(envelope),
                    envelope.mandatory,
                )
                parts.append(data)
                if seq is not None:
                    in_flight[seq] = (batch, envelope)
                    batch.remaining += 1
            return b"".join(parts)

        transport._send(produce)
        returned, self._late_returns = self._late_returns, []
        if not confirm:
            return returned
        transport._wait(lambda: batch.remaining == 0 or batch.error is not None, None)
        if batch.error is not None:
            raise batch.error
        returned.extend(batch.returned)
        if batch.nacked:
            raise MessageNacked(
                f"the broker refused {batch.nacked} of {len(envelopes)} messages (negative confirm)"
            )
        return returned

    def _on_confirmed(self, event: amqp.Confirmed) -> None:
        in_flight = self._in_flight
        for seq in event.delivery_tags:
            entry = in_flight.pop(seq, None)
            if entry is None:
                continue
            batch = entry[0]
            batch.remaining -= 1
            if not event.ack:
                batch.nacked += 1

    def _on_return(self, event: amqp.Return) -> None:
        for batch, candidate in self._in_flight.values():  # in publish order: the oldest match is it
            if (
                candidate.mandatory
                and candidate.routing_key == event.routing_key
                and candidate.exchange == event.exchange
                and candidate.body == event.body
            ):
                batch.returned.append(candidate)
                candidate.mandatory = False  # one return per envelope
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

    def qos(self, prefetch_count: int, global_: bool) -> None:
        self._qos = (prefetch_count, global_)
        self._ack_batch = min(_ACK_BATCH, max(1, prefetch_count // 2)) if prefetch_count else _ACK_BATCH
        self._call(lambda c, ch: c.basic_qos(ch, prefetch_count, global_qos=global_))

    def consume(
        self, queue: str, consumer_tag: str, no_ack: bool, arguments: Mapping[str, Any] | None
    ) -> str:
        args = _table(arguments)
        event = self._call(
            lambda c, ch: c.basic_consume(ch, queue, consumer_tag, no_ack=no_ack, arguments=args)
        )
        assert isinstance(event, amqp.ConsumeOk)
        self.consumers[event.consumer_tag] = queue
        return event.consumer_tag

    def cancel(self, consumer_tag: str) -> None:
        if self.consumers.pop(consumer_tag, None) is None or not self.is_open:
            return  # cancelled by the broker, or gone with its channel
        self._call(lambda c, ch: c.basic_cancel(ch, consumer_tag))

    def get(self, queue: str, no_ack: bool) -> Delivery | None:
        event = self._call(lambda c, ch: c.basic_get(ch, queue, no_ack=no_ack))
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

    def ack(self, delivery_tag: int, multiple: bool) -> None:
        """Record the ack; it is written with the channel's next batch (see the module docstring)."""
        tag = self._settleable(delivery_tag)
        if tag is None:
            return
        if multiple:  # written at once, after the pending ones
            self._transport._send(lambda c: self._settle_upto(c.basic_ack(self.channel_id, tag, True), tag))
            return
        acks = self._acks
        acks.append(tag)
        if len(acks) >= self._ack_batch:
            self._transport._send(_nothing)

    def reject(self, delivery_tag: int, requeue: bool, multiple: bool = False) -> None:
        tag = self._settleable(delivery_tag)
        if tag is None:
            return
        if multiple:
            self._transport._send(
                lambda c: self._settle_upto(c.basic_nack(self.channel_id, tag, True, requeue), tag)
            )
        else:
            self._transport._send(
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

    def recover(self, requeue: bool) -> None:
        self._call(lambda c, ch: c.basic_recover(ch, requeue))

    def close(self) -> None:
        if self._closed_by_us:
            return
        self._closed_by_us = True
        self.consumers.clear()
        transport = self._transport
        if self.is_open and transport.is_connected:
            try:
                transport._request(self, lambda c, ch: c.close_channel(ch), closing=True)
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
        {"confirm_publish", "heartbeat", "reply_timeout", "blocked_timeout", "frame_max", "channel_max"}
    )

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        opts = self.options

        def option(name: str, default: Any) -> Any:  # a transport option wins over the URL's query
            return opts[name] if name in opts else url.query.get(name, default)

        scheme = url.transport
        self.confirm_publish = _flag(option("confirm_publish", True))
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

    def connect(self, timeout: float | None) -> None:
        host = self.url.hostname or "localhost"
        port = self.url.port or (5671 if self.url.transport == "amqps" else 5672)
        where = f"{host}:{port}"
        try:
            self._driver.connect(host, port, self._ssl_context(), host, timeout)
        except OSError as exc:  # ssl.SSLError included
            self._driver.close()
            raise ConnectionError(f"cannot connect to AMQP broker at {where}: {exc}") from exc
        opened = self._driver.wait_for(lambda: self._core.is_open or self._lost, timeout)
        if self._lost is not None:
            self._driver.close()
            raise self._lost
        if not opened:
            self._driver.close()
            raise ConnectionError(f"AMQP handshake with {where} did not finish within {timeout} s")

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._lost is None and self._core.is_open:
            try:
                self._driver.send(lambda: self._pending_acks(self._core) + self._core.close())
                self._driver.wait_for(
                    lambda: self._core.state is amqp.ConnectionState.CLOSED or self._driver.error, 5.0
                )
            except (OSError, amqp.ProtocolError):
                pass
        self._driver.close()
        if self._lost is None:
            self._lost = OperationalError("the AMQP connection was closed")
        self._channels.clear()

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "server_properties": dict(self._core.server_properties),
            "heartbeat": self._core.heartbeat_interval,
            "frame_max": self._core.frame_max,
            "confirm_publish": self.confirm_publish,
        }

    # -- channels -------------------------------------------------------------------------------------------

    def open_channel(self) -> AmqpChannel:
        ids: list[int] = []

        def produce(core: amqp.Connection) -> bytes:
            channel_id, data = core.open_channel()
            ids.append(channel_id)
            self._replies[channel_id] = deque([reply])
            return data

        reply = _Reply()
        self._send(produce)
        channel = AmqpChannel(self, ids[0])
        self._channels[channel.channel_id] = channel
        self._result(reply)
        return channel

    def _reopen(self, channel: AmqpChannel) -> None:
        reply = _Reply()

        def produce(core: amqp.Connection) -> bytes:
            _, data = core.open_channel(channel.channel_id)
            self._replies[channel.channel_id] = deque([reply])
            return data

        self._send(produce)
        self._result(reply)
        channel._acks.clear()
        channel._floor = 0
        channel._settled.clear()
        channel.is_open = True
        channel._epoch += 1
        logger.info("reopened AMQP channel %d after the broker closed it", channel.channel_id)
        if channel._qos is not None:
            prefetch, global_ = channel._qos
            self._request(channel, lambda c, ch: c.basic_qos(ch, prefetch, global_qos=global_))

    # -- requests and waiting -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _pending_acks(self, core: amqp.Connection) -> bytes:
        """Every channel's pending acks, encoded (run under the driver's lock, ahead of the next command)."""
        parts = [channel._ack_frames(core) for channel in list(self._channels.values()) if channel._acks]
        return b"".join(parts)

    def _send(self, produce: Callable[[amqp.Connection], bytes]) -> None:
        """Write ``produce``'s bytes, preceded by the pending acks of every channel, in one write."""
        self._check()
        core = self._core
        try:
            self._driver.send(lambda: self._pending_acks(core) + produce(core))
        except amqp.LocalProtocolError as exc:
            self._check()
            raise ChannelError(f"cannot send this command: {exc}") from exc
        except (OSError, amqp.ProtocolError) as exc:
            self._check()
            raise ConnectionError(f"AMQP connection lost while writing: {exc}") from exc

    def _request(
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

        self._send(enqueue)
        return self._result(reply)

    def _result(self, reply: _Reply) -> amqp.Event:
        done = self._driver.wait_for(lambda: reply.done or self._lost, self.reply_timeout)
        if reply.done:
            if reply.error is not None:
                raise reply.error
            assert reply.event is not None
            return reply.event
        self._check()
        assert not done
        error = ConnectionError(f"the broker did not answer within {self.reply_timeout} s")
        self._on_lost(error)
        self._driver.close()
        raise error

    def _wait(self, predicate: Callable[[], object], timeout: float | None) -> None:
        self._driver.wait_for(lambda: predicate() or self._lost, timeout)
        self._check()

    def _wait_unblocked(self) -> None:
        if self.blocked is None:
            return
        logger.warning("the broker blocked this connection (%s); publish waits", self.blocked)
        self._driver.wait_for(lambda: self.blocked is None or self._lost, self.blocked_timeout)
        self._check()
        if self.blocked is not None:
            raise OperationalError(
                f"the broker kept this connection blocked ({self.blocked}) for {self.blocked_timeout} s"
            )

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
        for channel in list(self._channels.values()):
            for batch, _ in channel._in_flight.values():
                if batch.error is None:
                    batch.error = error
            channel._in_flight.clear()

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
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_confirmed(event)
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

    def drain(self, timeout: float | None) -> list[Delivery]:
        deliveries = self._deliveries
        if not deliveries:
            if self._lost is None and any(channel._acks for channel in list(self._channels.values())):
                self._send(_nothing)  # let the broker refill the prefetch windows while we wait
            self._driver.wait_for(lambda: deliveries or self._cancelled or self._lost, timeout)
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
