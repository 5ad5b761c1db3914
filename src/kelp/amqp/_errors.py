"""Exceptions and AMQP reply codes.

The split follows h11: :class:`LocalProtocolError` means *you* misused the API (publishing on a channel
that is not open, a value that cannot be encoded); :class:`RemoteProtocolError` means the *peer* sent
something that breaks the protocol.  After a ``RemoteProtocolError`` the connection is failed and unusable.
"""

from __future__ import annotations

import enum

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyCode",
    "reply_code_name",
]


class ReplyCode(enum.IntEnum):
    """AMQP 0-9-1 reply codes, as carried by ``connection.close``, ``channel.close`` and ``basic.return``."""

    REPLY_SUCCESS = 200
    CONTENT_TOO_LARGE = 311
    NO_ROUTE = 312
    NO_CONSUMERS = 313
    CONNECTION_FORCED = 320
    INVALID_PATH = 402
    ACCESS_REFUSED = 403
    NOT_FOUND = 404
    RESOURCE_LOCKED = 405
    PRECONDITION_FAILED = 406
    FRAME_ERROR = 501
    SYNTAX_ERROR = 502
    COMMAND_INVALID = 503
    CHANNEL_ERROR = 504
    UNEXPECTED_FRAME = 505
    RESOURCE_ERROR = 506
    NOT_ALLOWED = 530
    NOT_IMPLEMENTED = 540
    INTERNAL_ERROR = 541


_NAMES = {code.value: code.name for code in ReplyCode}


def reply_code_name(code: int) -> str:
    """Return the symbolic name of an AMQP reply code (``404 -> "NOT_FOUND"``), or ``"UNKNOWN_<code>"``."""
    return _NAMES.get(code, f"UNKNOWN_{code}")


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`kelp.amqp`.

    ``reply_code`` is the AMQP reply code that best describes the failure (useful when reporting it to the
    peer in ``connection.close`` or when mapping it to a higher-level exception).
    """

    def __init__(self, message: str, reply_code: int = ReplyCode.INTERNAL_ERROR) -> None:
        super().__init__(message)
        self.reply_code = int(reply_code)


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the current state does not allow.

    The connection state is unchanged: nothing was produced for the wire, so the caller may recover.
    """

    def __init__(self, message: str, reply_code: int = ReplyCode.COMMAND_INVALID) -> None:
        super().__init__(message, reply_code)


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate AMQP 0-9-1 (bad frame, unexpected method, malformed table...).

    The connection is marked failed; the only sensible reaction is to drop the transport.
    """

    def __init__(self, message: str, reply_code: int = ReplyCode.FRAME_ERROR) -> None:
        super().__init__(message, reply_code)
