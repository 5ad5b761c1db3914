"""Every error kelp raises, in one taxonomy.

Two questions sort every error:

* **Whose fault?** ``UsageError`` and its kin mean the caller misused the API (a second ack, an unbound
  entity, an unknown serializer); retrying cannot help. ``ChannelError`` and ``ConnectionError`` mean the
  broker refused or failed.
* **Recoverable?** ``OperationalError`` (a lost or refused connection) is worth a retry after reconnecting:
  ``Connection.ensure`` and ``autoretry`` retry exactly the errors whose ``recoverable`` attribute is true.
  A ``ChannelError`` such as ``NotFound`` or ``PreconditionFailed`` says the request itself is wrong for
  the broker's current state; retrying it unchanged fails the same way.

Transports map their native failures into these classes at their boundary, so application code catches
the same exceptions on every transport. Reply codes follow AMQP 0-9-1.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

__all__ = [
    "AccessRefused",
    "ChannelError",
    "ChannelLimitExceeded",
    "ConnectionError",
    "ConnectionLimitExceeded",
    "ConsumerCancelled",
    "ContentDisallowed",
    "DecodeError",
    "EncodeError",
    "InconsistencyError",
    "InvalidURL",
    "KelpError",
    "KombuError",
    "LimitExceeded",
    "MessageNacked",
    "MessageStateError",
    "NotBoundError",
    "NotFound",
    "OperationalError",
    "PreconditionFailed",
    "ResourceError",
    "ResourceLocked",
    "SerializationError",
    "SerializerNotInstalled",
    "TimeoutError",
    "UnsupportedTransport",
    "UsageError",
    "VersionMismatch",
    "channel_error_for",
]

#: ``drain_events`` raises this when nothing arrives in time; it is :class:`socket.timeout`, which is the
#: builtin ``TimeoutError``, so ``except socket.timeout`` and ``except TimeoutError`` both work.
TimeoutError = socket.timeout


class KelpError(Exception):
    """Base class of every kelp error."""

    #: True when reconnecting (or reopening the channel) and retrying may succeed.
    recoverable: bool = False

    @property
    def code(self) -> int:
        """The AMQP reply code the broker gave (``reply_code``; py-amqp's name), 0 when there is none."""
        return int(getattr(self, "reply_code", 0))


#: Kombu's name for the base class, so ``except kombu.exceptions.KombuError`` ports unchanged.
KombuError = KelpError


# --- misuse of the API: the caller's code must change --------------------------------------------------


class UsageError(KelpError):
    """The API was used in a way it does not allow."""


class NotBoundError(UsageError):
    """An entity needs a channel for this operation; bind it first (``entity.bind(channel)``)."""


class MessageStateError(UsageError):
    """The message was already acknowledged, rejected or requeued; each message settles exactly once."""


class InvalidURL(UsageError, ValueError):
    """A connection URL could not be parsed."""


class UnsupportedTransport(UsageError, ValueError):
    """The URL names a transport kelp does not have."""


class SerializationError(KelpError):
    """A body could not be encoded or decoded."""


class EncodeError(SerializationError):
    """The body could not be serialized or compressed."""


class DecodeError(SerializationError):
    """The body could not be deserialized or decompressed."""


class ContentDisallowed(SerializationError):
    """The message's content type is not in the consumer's accept list; the payload was not decoded."""


class SerializerNotInstalled(KelpError):
    """The serializer or compressor is registered but its library is not installed."""


class VersionMismatch(KelpError):
    """A library or stored schema has a version kelp cannot use."""


class InconsistencyError(KelpError):
    """The broker's state contradicts itself; this usually means a bug or a damaged store."""


# --- the broker refused or failed ----------------------------------------------------------------------


class OperationalError(KelpError):
    """The connection to the broker failed or was lost; reconnecting and retrying may succeed."""

    recoverable = True


class ConnectionError(OperationalError):
    """The connection was closed by the broker or could not be established."""

    def __init__(self, message: str = "", reply_code: int = 0) -> None:
        super().__init__(message)
        self.reply_code = reply_code


class ConsumerCancelled(OperationalError):
    """The broker cancelled a consumer: its queue was deleted (on RabbitMQ also: its node went away).

    Raised by ``drain_events``; the consumer no longer receives anything from that queue, and its
    delivered but unacked messages stay unacked (settle them, or they return when the channel closes).
    Recoverable, as py-amqp's exception of the same name: declare the queue again and consume again —
    ``ConsumerMixin`` does both by reconnecting.
    """

    def __init__(self, message: str = "", consumer_tag: str = "", channel_id: int = 0) -> None:
        super().__init__(message)
        self.consumer_tag = consumer_tag
        self.channel_id = channel_id


class ChannelError(KelpError):
    """The broker refused an operation on a channel (AMQP channel exception)."""

    reply_code: int = 0

    def __init__(self, message: str = "", reply_code: int | None = None) -> None:
        super().__init__(message)
        if reply_code is not None:
            self.reply_code = reply_code

    @property
    def reply_text(self) -> str:
        return str(self)


class AccessRefused(ChannelError):
    """The user may not use this resource (AMQP 403)."""

    reply_code = 403


class NotFound(ChannelError):
    """The exchange or queue does not exist (AMQP 404)."""

    reply_code = 404


class ResourceLocked(ChannelError):
    """The queue is exclusive to another connection (AMQP 405)."""

    reply_code = 405


class PreconditionFailed(ChannelError):
    """The request contradicts existing state, such as a redeclaration with other arguments (AMQP 406)."""

    reply_code = 406


class MessageNacked(ChannelError):
    """The broker refused to take responsibility for a published message (a negative confirm, or a full
    queue with ``x-overflow: reject-publish``). The message was not enqueued on at least one queue.

    ``envelopes`` lists the refused messages when the transport knows them (with pipelined confirms the
    refusal of an earlier publish is raised by a later publish, ``flush`` or ``close``)."""

    def __init__(
        self, message: str = "", reply_code: int | None = None, *, envelopes: Sequence[Any] = ()
    ) -> None:
        super().__init__(message, reply_code)
        self.envelopes: list[Any] = list(envelopes)


class ResourceError(KelpError):
    """The broker or the client ran out of a resource."""


class LimitExceeded(ResourceError):
    """A configured limit was reached."""


class ConnectionLimitExceeded(LimitExceeded):
    """A connection pool has no free connection."""


class ChannelLimitExceeded(LimitExceeded):
    """A channel pool, or the connection's channel_max, has no free channel."""


_BY_REPLY_CODE: dict[int, type[ChannelError]] = {
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}


def channel_error_for(reply_code: int, reply_text: str) -> ChannelError:
    """The exception that represents an AMQP channel close with this reply code."""
    cls = _BY_REPLY_CODE.get(reply_code, ChannelError)
    return cls(reply_text, reply_code)
