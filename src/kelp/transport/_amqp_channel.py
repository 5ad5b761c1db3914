# Generated from src/kelp/aio/transport/_amqp_channel.py by scripts/unasync.py; do not edit.
"""An amqp:// channel: declarations and bindings as synchronous AMQP commands, publishes written in one
batch and tracked in the connection's outbox until confirmed (mandatory messages wait for their verdict;
returns come back from publish), consumers, and coalesced acks (a run of settled tags goes out as one
``basic.ack`` with ``multiple``). After the broker closes the AMQP channel over a refused operation, the
next call reopens it (same id, new tag incarnation) and re-applies its ``qos``."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kelp import amqp
from kelp._envelope import Delivery, Envelope, QueueInfo, is_persistent
from kelp.exceptions import (
    ChannelError,
    OperationalError,
    UsageError,
)
from kelp.transport._amqp_common import (
    _ACK_BATCH,
    _EPOCH_SHIFT,
    _SETTLED_MAX,
    _TAG_MASK,
    _basic_properties,
    _nothing,
    _properties,
    _table,
)
from kelp.transport.base import TransportChannel

if TYPE_CHECKING:
    from kelp.transport.amqp import AmqpTransport

__all__ = ["AmqpChannel"]

logger = logging.getLogger("kelp.transport.amqp")


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
        # unconfirmed publishes of this channel will never be confirmed: their waiters fail, the rest are
        # reported as refused (by the connection's next publish or flush)
        reported = self._transport._outbox.close_channel(self.channel_id, error)
        self._mandatory.clear()
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
        """Write the batch; wait for its confirms only with ``confirm_publish`` or a mandatory message.

        See the module docstring. An envelope is in the connection's outbox from when its bytes are
        written until the broker settles it; if this call raises, its envelopes are not in the outbox.
        """
        transport = self._transport
        self._ready()
        if any(envelope.due is not None for envelope in envelopes):
            envelopes = transport.delays.readdress(self, envelopes)
        if not transport.confirms:
            transport._await_broker(transport._unblocked, None)
            transport._send(lambda core: self._encode(core, envelopes, None, None))
            returned, self._late_returns = self._late_returns, []
            return returned
        if not self._confirming:
            transport._request(self, lambda c, ch: c.confirm_select(ch))
            self._confirming = True
        if not transport._has_room():
            transport._await_broker(transport._has_room, None)
        waiter: amqp.Waiter[Envelope] | None = None
        if transport.confirm_publish or any(envelope.mandatory for envelope in envelopes):
            waiter = amqp.Waiter()
        seqs: list[int] = []
        # a persistent message must have left the process when publish returns (asyncio: buffer drained)
        drain = any(is_persistent(envelope.properties) for envelope in envelopes)
        try:
            transport._send(lambda core: self._encode(core, envelopes, waiter, seqs), drain)
            returned, self._late_returns = self._late_returns, []
            if waiter is not None:
                try:
                    transport._await_broker(lambda: waiter.done, None)
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

    def cancel_delayed(self, message_id: str) -> int:
        raise UsageError(
            "amqp:// cannot cancel a delayed message: RabbitMQ (TTL tiers or the delayed-message plugin) "
            "keeps no index of the messages it holds"
        )

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
