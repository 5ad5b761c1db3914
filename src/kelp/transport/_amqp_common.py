# Generated from src/kelp/aio/transport/_amqp_common.py by scripts/unasync.py; do not edit.
"""What the parts of the amqp:// transport share: delivery tags that carry their channel's incarnation,
the slot a synchronous request waits in, and the mapping of kelp's message properties to AMQP basic
properties and back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kelp import amqp
from kelp._envelope import PROPERTY_NAMES, Envelope
from kelp._options import seconds_option

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
