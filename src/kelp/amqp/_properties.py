"""``basic`` content properties and the content-header frame payload codec.

The header payload is ``class-id(16) weight(16) body-size(64) property-flags(16)`` followed by the present
properties in flag order (bit 15 = content_type ... bit 2 = cluster_id).  The codec is written out by hand:
it runs once per message in each direction.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode
from ._fields import FieldTable, FieldValue, decode_table, encode_table, encode_text, lenient_text

__all__ = ["BasicProperties", "decode_content_header", "encode_content_header"]


class BasicProperties(NamedTuple):
    """Message properties of the ``basic`` class; ``None`` means "absent" (not sent on the wire).

    ``delivery_mode`` is 1 (transient) or 2 (persistent); ``priority`` 0-255; ``timestamp`` is whole seconds
    since the Unix epoch; ``expiration`` is a string of milliseconds, as RabbitMQ expects.  Values are checked
    when encoded: a string over 255 bytes or an out-of-range integer raises :class:`LocalProtocolError`.

    Received strings are never refused: RabbitMQ relays whatever bytes a publisher sent, so a property that
    is not valid UTF-8 arrives with each bad byte kept as a lone surrogate; ``value.encode("utf-8",
    "surrogateescape")`` gives the exact bytes back, and encoding such a value sends those bytes unchanged.

    An immutable named tuple rather than a dataclass because one is built for every message received and a
    tuple is several times cheaper to construct; use ``props._replace(...)`` to derive a modified copy.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: FieldTable | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


EMPTY_PROPERTIES = BasicProperties()

_HEADER = struct.Struct(">HHQH")
_U8 = struct.Struct(">B")
_U64 = struct.Struct(">Q")
_new_tuple = tuple.__new__  # skips NamedTuple.__new__'s argument handling on the receive path


def _ss(value: str, name: str) -> bytes:
    raw = encode_text(value)
    if len(raw) > 255:
        raise LocalProtocolError(f"property {name} is longer than 255 bytes")
    return _U8.pack(len(raw)) + raw


def _octet(value: int, name: str) -> bytes:
    if not 0 <= value <= 255:
        raise LocalProtocolError(f"property {name} must be 0-255, got {value}")
    return _U8.pack(value)


def encode_content_header(body_size: int, props: BasicProperties | None) -> bytes:
    """Content-header payload for a ``basic`` message of ``body_size`` bytes."""
    if props is None:
        return _HEADER.pack(60, 0, body_size, 0)
    (
        content_type,
        content_encoding,
        headers,
        delivery_mode,
        priority,
        correlation_id,
        reply_to,
        expiration,
        message_id,
        timestamp,
        type_,
        user_id,
        app_id,
        cluster_id,
    ) = props
    flags = 0
    parts = [b""]
    append = parts.append
    if content_type is not None:
        flags = 0x8000
        append(_ss(content_type, "content_type"))
    if content_encoding is not None:
        flags |= 0x4000
        append(_ss(content_encoding, "content_encoding"))
    if headers is not None:
        flags |= 0x2000
        append(encode_table(headers))
    if delivery_mode is not None:
        flags |= 0x1000
        append(_octet(delivery_mode, "delivery_mode"))
    if priority is not None:
        flags |= 0x0800
        append(_octet(priority, "priority"))
    if correlation_id is not None:
        flags |= 0x0400
        append(_ss(correlation_id, "correlation_id"))
    if reply_to is not None:
        flags |= 0x0200
        append(_ss(reply_to, "reply_to"))
    if expiration is not None:
        flags |= 0x0100
        append(_ss(expiration, "expiration"))
    if message_id is not None:
        flags |= 0x0080
        append(_ss(message_id, "message_id"))
    if timestamp is not None:
        flags |= 0x0040
        if not 0 <= timestamp < 2**64:
            raise LocalProtocolError(f"property timestamp must be a uint64, got {timestamp}")
        append(_U64.pack(timestamp))
    if type_ is not None:
        flags |= 0x0020
        append(_ss(type_, "type"))
    if user_id is not None:
        flags |= 0x0010
        append(_ss(user_id, "user_id"))
    if app_id is not None:
        flags |= 0x0008
        append(_ss(app_id, "app_id"))
    if cluster_id is not None:
        flags |= 0x0004
        append(_ss(cluster_id, "cluster_id"))
    parts[0] = _HEADER.pack(60, 0, body_size, flags)
    return b"".join(parts)


def _str(payload: bytes, pos: int) -> tuple[str, int]:
    # Bounds are checked once at the end of decode_content_header: a slice past the end comes back short
    # and leaves ``pos`` beyond ``stop``.
    end = pos + 1 + payload[pos]
    raw = payload[pos + 1 : end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return lenient_text(raw), end


def decode_content_header(payload: bytes) -> tuple[int, int, BasicProperties]:
    """``(class_id, body_size, properties)`` from a content-header payload.

    Raises :class:`RemoteProtocolError` on truncation, trailing bytes or property-flag continuation (the
    ``basic`` class has only 14 properties, so the continuation bit must be clear).  Property *values* are
    never refused: text that is not UTF-8 keeps its bytes as lone surrogates (see :class:`BasicProperties`).
    """
    stop = len(payload)
    if stop < 14:
        raise RemoteProtocolError("content header frame is truncated", ReplyCode.FRAME_ERROR)
    class_id, _weight, body_size, flags = _HEADER.unpack_from(payload, 0)
    if flags == 0:
        if stop != 14:
            raise RemoteProtocolError("content header has trailing bytes", ReplyCode.FRAME_ERROR)
        return class_id, body_size, EMPTY_PROPERTIES
    if flags & 0x0003:
        raise RemoteProtocolError(
            f"content header has unknown property flags 0x{flags:04x}", ReplyCode.FRAME_ERROR
        )
    pos = 14
    content_type = content_encoding = correlation_id = reply_to = expiration = message_id = None
    type_ = user_id = app_id = cluster_id = None
    headers: dict[str, FieldValue] | None = None
    delivery_mode = priority = timestamp = None
    try:
        if flags & 0x8000:  # the most common property is decoded inline
            end = 15 + payload[14]
            raw = payload[15:end]
            try:
                content_type = raw.decode()
            except UnicodeDecodeError:
                content_type = lenient_text(raw)
            pos = end
        if flags & 0x4000:
            content_encoding, pos = _str(payload, pos)
        if flags & 0x2000:
            headers, pos = decode_table(payload, pos, stop)
        if flags & 0x1000:
            delivery_mode = payload[pos]
            pos += 1
        if flags & 0x0800:
            priority = payload[pos]
            pos += 1
        if flags & 0x0400:
            correlation_id, pos = _str(payload, pos)
        if flags & 0x0200:
            reply_to, pos = _str(payload, pos)
        if flags & 0x0100:
            expiration, pos = _str(payload, pos)
        if flags & 0x0080:
            message_id, pos = _str(payload, pos)
        if flags & 0x0040:
            timestamp = _U64.unpack_from(payload, pos)[0]
            pos += 8
        if flags & 0x0020:
            type_, pos = _str(payload, pos)
        if flags & 0x0010:
            user_id, pos = _str(payload, pos)
        if flags & 0x0008:
            app_id, pos = _str(payload, pos)
        if flags & 0x0004:
            cluster_id, pos = _str(payload, pos)
    except (IndexError, struct.error):
        raise RemoteProtocolError("content header is truncated", ReplyCode.FRAME_ERROR) from None
    if pos != stop:
        raise RemoteProtocolError(
            "content header length does not match its properties", ReplyCode.FRAME_ERROR
        )
    props = _new_tuple(
        BasicProperties,
        (
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            type_,
            user_id,
            app_id,
            cluster_id,
        ),
    )
    return class_id, body_size, props
