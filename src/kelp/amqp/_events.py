"""Events produced by :class:`kelp.amqp.Connection` from the bytes it receives.

Every event is a small frozen dataclass.  Channel events carry ``channel``; replies to synchronous requests
arrive in the order the requests were sent on that channel, so a driver can keep one FIFO of waiters per
channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._errors import reply_code_name
from ._fields import FieldValue
from ._properties import BasicProperties

__all__ = [
    "CancelOk",
    "ChannelClosed",
    "ChannelFlow",
    "ChannelOpened",
    "ConfirmSelectOk",
    "Confirmed",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionUnblocked",
    "ConsumeOk",
    "ConsumerCancelled",
    "Deliver",
    "Event",
    "ExchangeBindOk",
    "ExchangeDeclareOk",
    "ExchangeDeleteOk",
    "ExchangeUnbindOk",
    "FlowOk",
    "GetEmpty",
    "GetOk",
    "Heartbeat",
    "QosOk",
    "QueueBindOk",
    "QueueDeclareOk",
    "QueueDeleteOk",
    "QueuePurgeOk",
    "QueueUnbindOk",
    "RecoverOk",
    "Return",
    "TxCommitOk",
    "TxRollbackOk",
    "TxSelectOk",
]


class Event:
    """Base class of every event."""

    __slots__ = ()


# -- connection ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Event):
    """Handshake finished (``connection.open-ok``); the values are the negotiated ones."""

    frame_max: int
    channel_max: int
    heartbeat: int
    server_properties: dict[str, FieldValue]


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The connection is closed.

    ``by_peer`` is True when the server sent ``connection.close`` (the core already queued ``close-ok``;
    flush :meth:`Connection.data_to_send` then drop the transport).  It is False when this is the server's
    ``close-ok`` to our own :meth:`Connection.close`; the reply fields then echo what we sent.  Messages that
    were delivered but not acked will be redelivered by the broker to another consumer.
    """

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int
    by_peer: bool

    @property
    def reply_name(self) -> str:
        return reply_code_name(self.reply_code)


@dataclass(frozen=True, slots=True)
class ConnectionBlocked(Event):
    """The broker stopped reading from publishers (resource alarm); publishes will stall until unblocked."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionUnblocked(Event):
    """The broker resumed reading from publishers."""


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    """A heartbeat frame arrived.  Nothing to answer: the driver sends its own on its deadline."""


# -- channel lifecycle --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOpened(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed(Event):
    """A channel is closed and its id is free again.

    ``by_peer`` is True when the server closed it (a soft error such as NOT_FOUND or PRECONDITION_FAILED;
    ``close-ok`` is already queued).  Pending synchronous requests on it will never be answered, and its
    unacked deliveries are requeued by the broker.
    """

    channel: int
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int
    by_peer: bool

    @property
    def reply_name(self) -> str:
        return reply_code_name(self.reply_code)


@dataclass(frozen=True, slots=True)
class ChannelFlow(Event):
    """The server asked us to stop (``active=False``) or resume sending content; ``flow-ok`` is queued."""

    channel: int
    active: bool


@dataclass(frozen=True, slots=True)
class FlowOk(Event):
    """Reply to :meth:`Connection.channel_flow`."""

    channel: int
    active: bool


# -- replies to synchronous requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExchangeDeclareOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ExchangeDeleteOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ExchangeBindOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ExchangeUnbindOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class QueueDeclareOk(Event):
    channel: int
    queue: str
    message_count: int
    consumer_count: int


@dataclass(frozen=True, slots=True)
class QueueBindOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class QueueUnbindOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class QueuePurgeOk(Event):
    channel: int
    message_count: int


@dataclass(frozen=True, slots=True)
class QueueDeleteOk(Event):
    channel: int
    message_count: int


@dataclass(frozen=True, slots=True)
class QosOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ConsumeOk(Event):
    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class CancelOk(Event):
    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class GetEmpty(Event):
    """Reply to :meth:`Connection.basic_get` when the queue was empty."""

    channel: int


@dataclass(frozen=True, slots=True)
class RecoverOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class ConfirmSelectOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class TxSelectOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class TxCommitOk(Event):
    channel: int


@dataclass(frozen=True, slots=True)
class TxRollbackOk(Event):
    channel: int


# -- messages -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver(Event):
    """A message pushed to a consumer; ack it with ``delivery_tag`` on the same channel (unless no_ack)."""

    channel: int
    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True, slots=True)
class GetOk(Event):
    """A message fetched by :meth:`Connection.basic_get`; ``message_count`` is what remains in the queue."""

    channel: int
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message_count: int
    properties: BasicProperties
    body: bytes


@dataclass(frozen=True, slots=True)
class Return(Event):
    """A ``mandatory``/``immediate`` message the broker could not route, handed back (e.g. NO_ROUTE 312).

    With confirms on, the matching :class:`Confirmed` follows it: the broker "took responsibility" by
    returning it, so a publisher that cares must watch for Return before Confirmed.
    """

    channel: int
    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: BasicProperties
    body: bytes

    @property
    def reply_name(self) -> str:
        return reply_code_name(self.reply_code)


@dataclass(frozen=True, slots=True)
class Confirmed(Event):
    """Publisher confirms resolved by one ``basic.ack`` (``ack=True``) or ``basic.nack`` (``ack=False``).

    ``delivery_tags`` holds exactly the publish sequence numbers (as returned by
    :meth:`Connection.basic_publish`) newly settled by this frame, already expanded from ``multiple`` and
    never repeating a tag settled earlier: usually a ``range``, a tuple when earlier single confirms left
    gaps.  A nacked message was not accepted by the broker and should be republished or reported.
    """

    channel: int
    delivery_tags: range | tuple[int, ...]
    ack: bool


@dataclass(frozen=True, slots=True)
class ConsumerCancelled(Event):
    """The broker cancelled a consumer (queue deleted, node failure); no more deliveries for this tag."""

    channel: int
    consumer_tag: str


# Replies that map straight onto an event: method name -> (event class, whether the method's fields follow the
# channel id as the event's remaining fields).
REPLY_EVENTS: dict[str, tuple[Callable[..., Event], bool]] = {
    "channel.flow-ok": (FlowOk, True),
    "exchange.declare-ok": (ExchangeDeclareOk, False),
    "exchange.delete-ok": (ExchangeDeleteOk, False),
    "exchange.bind-ok": (ExchangeBindOk, False),
    "exchange.unbind-ok": (ExchangeUnbindOk, False),
    "queue.declare-ok": (QueueDeclareOk, True),
    "queue.bind-ok": (QueueBindOk, False),
    "queue.unbind-ok": (QueueUnbindOk, False),
    "queue.purge-ok": (QueuePurgeOk, True),
    "queue.delete-ok": (QueueDeleteOk, True),
    "basic.qos-ok": (QosOk, False),
    "basic.consume-ok": (ConsumeOk, True),
    "basic.cancel-ok": (CancelOk, True),
    "basic.get-empty": (GetEmpty, False),
    "basic.recover-ok": (RecoverOk, False),
    "confirm.select-ok": (ConfirmSelectOk, False),
    "tx.select-ok": (TxSelectOk, False),
    "tx.commit-ok": (TxCommitOk, False),
    "tx.rollback-ok": (TxRollbackOk, False),
}
