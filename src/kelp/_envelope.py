"""What crosses the transport interface: outgoing envelopes and incoming deliveries (plain data)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["PROPERTY_NAMES", "Delivery", "Envelope", "QueueInfo", "QueueStats", "is_persistent"]

#: The AMQP 0-9-1 basic properties a message carries besides its headers, in wire order.
PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


def is_persistent(properties: Mapping[str, Any]) -> bool:
    """Whether a message is persistent: unless its ``delivery_mode`` is 1 (transient), it is - also when it
    has none (a message prepared by hand), kelp's default."""
    return properties.get("delivery_mode") != 1


class Envelope:
    """A message on its way to an exchange: the encoded body, its properties and its address.

    ``properties`` holds the AMQP basic properties (never ``headers``); ``expiration`` is a string of
    milliseconds as in AMQP. ``due`` is the wall-clock time (seconds since the epoch) before which the
    message must not become ready in any queue (a delayed message), or None to deliver it at once; a
    delayed message always has a ``message_id``, the id that cancels it. Envelopes are treated as
    immutable once published: brokers kelp runs itself share one envelope among the queues a message was
    routed to.
    """

    __slots__ = ("body", "due", "exchange", "headers", "mandatory", "properties", "routing_key")

    def __init__(
        self,
        body: bytes,
        properties: dict[str, Any],
        headers: dict[str, Any],
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        due: float | None = None,
    ) -> None:
        self.body = body
        self.due = due
        self.properties = properties
        self.headers = headers
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory

    def __repr__(self) -> str:
        return f"<Envelope {self.exchange!r}/{self.routing_key!r} {len(self.body)} bytes>"

    @classmethod
    def from_encoded(
        cls,
        body: bytes | str,
        priority: int | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Envelope:
        """An unaddressed envelope from an already-encoded body (Kombu's ``prepare_message``). Properties
        outside AMQP's basic set are not carried, as on RabbitMQ: put extra data in ``headers``."""
        props = {k: v for k, v in (properties or {}).items() if k in PROPERTY_NAMES and v is not None}
        if priority is not None:
            props["priority"] = priority
        if content_type is not None:
            props["content_type"] = content_type
        if content_encoding is not None:
            props["content_encoding"] = content_encoding
        raw = body.encode(content_encoding or "utf-8") if isinstance(body, str) else body
        return cls(raw, props, dict(headers or {}))


class Delivery:
    """A message handed to a consumer (or returned by ``get``) on one channel of a transport."""

    __slots__ = (
        "body",
        "channel_id",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "headers",
        "message_count",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        channel_id: int,
        consumer_tag: str,
        delivery_tag: int,
        body: bytes,
        properties: dict[str, Any],
        headers: dict[str, Any],
        exchange: str,
        routing_key: str,
        redelivered: bool,
        message_count: int | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.body = body
        self.properties = properties
        self.headers = headers
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered
        self.message_count = message_count

    def __repr__(self) -> str:
        return f"<Delivery #{self.delivery_tag} {self.exchange!r}/{self.routing_key!r}>"


class QueueInfo(NamedTuple):
    """The answer to a queue declaration (AMQP's ``queue.declare-ok``)."""

    queue: str
    message_count: int
    consumer_count: int


class QueueStats(tuple[str, int, int, int]):
    """One queue's counts for ``Transport.queue_stats``: unpacks as ``(queue, ready, unacked, consumers)``
    (the shape older callers read) and carries ``delayed``, the messages held until their due time, and
    three counters the broker keeps for the queue since it was declared (None where a transport cannot
    count them): ``published``, copies of messages that entered the queue (routed to it, dead-lettered
    to it, or a delayed message come due); ``delivered``, messages handed to a consumer or taken by
    ``get`` (redeliveries included); ``acked``, deliveries acknowledged. Rates are differences of these
    over time (see :mod:`kelp.web`)."""

    delayed: int
    published: int | None
    delivered: int | None
    acked: int | None

    def __new__(
        cls,
        queue: str,
        ready: int,
        unacked: int,
        consumers: int,
        delayed: int = 0,
        published: int | None = None,
        delivered: int | None = None,
        acked: int | None = None,
    ) -> QueueStats:
        self = super().__new__(cls, (queue, ready, unacked, consumers))
        self.delayed = delayed
        self.published = published
        self.delivered = delivered
        self.acked = acked
        return self

    def __repr__(self) -> str:
        return f"QueueStats{(*self, self.delayed, self.published, self.delivered, self.acked)!r}"

    @property
    def queue(self) -> str:
        return self[0]

    @property
    def ready(self) -> int:
        return self[1]

    @property
    def unacked(self) -> int:
        return self[2]

    @property
    def consumers(self) -> int:
        return self[3]
