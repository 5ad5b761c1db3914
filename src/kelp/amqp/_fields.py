"""Primitive AMQP codecs: short/long strings and field tables (RabbitMQ's dialect of AMQP 0-9-1).

Type tags follow the RabbitMQ errata, not the ambiguous letter of the 0-9-1 spec:

===  =========================  ======================================
tag  wire type                  Python
===  =========================  ======================================
t    boolean octet              bool
b/B  int8 / uint8               int
s/u  int16 / uint16             int
I/i  int32 / uint32             int
l    int64                      int
f/d  float32 / float64          float
D    decimal (scale, int32)     Decimal
S    long string                str (bytes when not valid UTF-8)
x    byte array                 bytes
T    timestamp (uint64 secs)    datetime (aware, UTC); int seconds past year 9999

A    array                      list
F    nested table               dict
V    void                       None
===  =========================  ======================================

Encoding picks ``I`` for ints that fit 32 bits and ``l`` otherwise, ``d`` for floats, ``S`` for str, ``x`` for
bytes.  Decoding enforces every length against its enclosing bound, so a hostile table can never read past
its frame, and nesting deeper than :data:`MAX_DEPTH` is refused.

Text the broker relays from foreign publishers is decoded leniently, as RabbitMQ stores it without checking:
a short string or a table key that is not valid UTF-8 becomes a ``str`` with each undecodable byte kept as a
lone surrogate (Python's ``surrogateescape``), so ``value.encode("utf-8", "surrogateescape")`` gives back the
exact bytes and the encoders here send them unchanged.  A malformed *frame* (lengths past their bound, an
unknown type tag) is still a :class:`RemoteProtocolError`; an odd *value* never is.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeAlias

from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode

__all__ = [
    "MAX_DEPTH",
    "FieldTable",
    "FieldValue",
    "decode_longstr",
    "decode_shortstr",
    "decode_table",
    "encode_longstr",
    "encode_shortstr",
    "encode_table",
    "encode_text",
    "lenient_text",
]

FieldValue: TypeAlias = (
    "bool | int | float | Decimal | str | bytes | datetime"
    " | list[FieldValue] | tuple[FieldValue, ...] | Mapping[str, FieldValue] | None"
)
FieldTable: TypeAlias = Mapping[str, FieldValue]

#: Deepest nesting of tables/arrays accepted on decode and produced on encode.
MAX_DEPTH = 64

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_DECIMAL = struct.Struct(">Bi")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EMPTY_TABLE = b"\x00\x00\x00\x00"
_LENGTH_OCTET = [bytes((n,)) for n in range(256)]

# Fixed-width numeric tags: tag -> struct.
_FIXED: dict[int, struct.Struct] = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("f"): struct.Struct(">f"),
    ord("d"): struct.Struct(">d"),
}
_PACK_INT32 = struct.Struct(">ci").pack
_PACK_INT64 = struct.Struct(">cq").pack
_PACK_DOUBLE = struct.Struct(">cd").pack
_PACK_TS = struct.Struct(">cQ").pack
_PACK_LEN = struct.Struct(">cI").pack


def _truncated(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"malformed field table: {what} runs past the end of its data", ReplyCode.SYNTAX_ERROR
    )


# -- short and long strings ---------------------------------------------------------------------------------


def lenient_text(raw: bytes) -> str:
    """``raw`` as text: UTF-8, with each byte that is not valid UTF-8 kept as a lone surrogate."""
    return raw.decode("utf-8", "surrogateescape")


def encode_text(value: str) -> bytes:
    """UTF-8 of ``value``; the lone surrogates :func:`lenient_text` made become their original bytes again.

    Raises :class:`LocalProtocolError` for other lone surrogates, which have no UTF-8 encoding.
    """
    try:
        return value.encode()
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{value[:40]!r} cannot be encoded as UTF-8") from None


def encode_shortstr(value: str) -> bytes:
    """Encode a shortstr (one length octet + UTF-8); :class:`LocalProtocolError` if over 255 bytes."""
    raw = encode_text(value)
    if len(raw) > 255:
        raise LocalProtocolError(f"short string too long ({len(raw)} bytes, max 255): {value[:40]!r}...")
    return _U8.pack(len(raw)) + raw


def decode_shortstr(buf: bytes, pos: int, stop: int) -> tuple[str, int]:
    """Decode a shortstr at ``buf[pos:]`` that must end before ``stop``; return ``(value, new_pos)``.

    Bytes that are not valid UTF-8 are kept as lone surrogates (see :func:`lenient_text`).
    """
    if pos >= stop:
        raise _truncated("short string length")
    end = pos + 1 + buf[pos]
    if end > stop:
        raise _truncated("short string")
    raw = buf[pos + 1 : end]
    try:
        return raw.decode(), end
    except UnicodeDecodeError:
        return lenient_text(raw), end


def encode_longstr(value: bytes | str) -> bytes:
    """Encode a longstr (uint32 length + raw bytes; str is UTF-8 encoded)."""
    raw = encode_text(value) if isinstance(value, str) else bytes(value)
    return _U32.pack(len(raw)) + raw


def decode_longstr(buf: bytes, pos: int, stop: int) -> tuple[bytes, int]:
    """Decode a longstr as raw bytes; return ``(value, new_pos)``."""
    if pos + 4 > stop:
        raise _truncated("long string length")
    end = pos + 4 + _U32.unpack_from(buf, pos)[0]
    if end > stop:
        raise _truncated("long string")
    return bytes(buf[pos + 4 : end]), end


# -- encoding -----------------------------------------------------------------------------------------------


def encode_table(table: FieldTable | None) -> bytes:
    """Encode a field table including its uint32 length prefix.

    Raises :class:`LocalProtocolError` for values that have no AMQP representation (ints beyond 64 bits,
    keys longer than 255 bytes, unsupported types, nesting deeper than :data:`MAX_DEPTH`).
    """
    if not table:
        return _EMPTY_TABLE
    body = _table_body(table, 1)
    return _U32.pack(len(body)) + body


def _table_body(table: FieldTable, depth: int) -> bytes:
    if depth > MAX_DEPTH:
        raise LocalProtocolError(f"field table nested deeper than {MAX_DEPTH} levels (or self-referential)")
    parts: list[bytes] = []
    append = parts.append
    for key, value in table.items():
        # the common cases (str and None values) written out: this runs for every header of every message
        if not isinstance(key, str):
            raise LocalProtocolError(f"field table keys must be str, got {type(key).__name__}")
        try:
            raw = key.encode()
        except UnicodeEncodeError:
            raw = encode_text(key)
        if len(raw) > 255:
            encode_shortstr(key)  # raises, naming the key
        append(_LENGTH_OCTET[len(raw)])
        append(raw)
        if type(value) is str:
            try:
                raw = value.encode()
            except UnicodeEncodeError:
                raw = encode_text(value)
            append(_PACK_LEN(b"S", len(raw)))
            append(raw)
        elif value is None:
            append(b"V")
        else:
            append(_value(value, depth))
    return b"".join(parts)


def _value(v: FieldValue, depth: int) -> bytes:
    t = type(v)
    if t is str:
        raw = encode_text(v)  # type: ignore[arg-type]
        return _PACK_LEN(b"S", len(raw)) + raw
    if t is bool:
        return b"t\x01" if v else b"t\x00"
    if t is int:
        return _int_value(v)  # type: ignore[arg-type]
    if v is None:
        return b"V"
    if t is float:
        return _PACK_DOUBLE(b"d", v)
    if t is dict:
        body = _table_body(v, depth + 1) if v else b""  # type: ignore[arg-type]
        return _PACK_LEN(b"F", len(body)) + body
    if t is list or t is tuple:
        return _array_value(v, depth)  # type: ignore[arg-type]
    if isinstance(v, bool):
        return b"t\x01" if v else b"t\x00"
    if isinstance(v, int):
        return _int_value(int(v))
    if isinstance(v, str):
        raw = encode_text(v)
        return _PACK_LEN(b"S", len(raw)) + raw
    if isinstance(v, bytes | bytearray | memoryview):
        raw = bytes(v)
        return _PACK_LEN(b"x", len(raw)) + raw
    if isinstance(v, float):
        return _PACK_DOUBLE(b"d", v)
    if isinstance(v, Mapping):
        body = _table_body(v, depth + 1)
        return _PACK_LEN(b"F", len(body)) + body
    if isinstance(v, list | tuple):
        return _array_value(v, depth)
    if isinstance(v, datetime):
        return _PACK_TS(b"T", _timestamp_seconds(v))
    if isinstance(v, Decimal):
        return _decimal_value(v)
    raise LocalProtocolError(f"cannot encode {type(v).__name__} in an AMQP field table")


def _array_value(v: list[FieldValue] | tuple[FieldValue, ...], depth: int) -> bytes:
    if depth + 1 > MAX_DEPTH:
        raise LocalProtocolError(f"field array nested deeper than {MAX_DEPTH} levels (or self-referential)")
    body = b"".join([_value(item, depth + 1) for item in v])
    return _PACK_LEN(b"A", len(body)) + body


def _int_value(v: int) -> bytes:
    if _INT32_MIN <= v <= _INT32_MAX:
        return _PACK_INT32(b"I", v)
    if _INT64_MIN <= v <= _INT64_MAX:
        return _PACK_INT64(b"l", v)
    raise LocalProtocolError(f"integer {v} does not fit a signed 64-bit AMQP field value")


def _timestamp_seconds(v: datetime) -> int:
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
    seconds = int(v.timestamp())
    if seconds < 0:
        raise LocalProtocolError(f"timestamp {v.isoformat()} is before 1970 and cannot be encoded")
    return seconds


def _decimal_value(v: Decimal) -> bytes:
    sign, digits, exponent = v.as_tuple()
    if not isinstance(exponent, int):
        raise LocalProtocolError(f"cannot encode non-finite decimal {v}")
    unscaled = int("".join(map(str, digits)) or "0")
    if exponent > 0:
        unscaled *= 10**exponent
        exponent = 0
    if sign:
        unscaled = -unscaled
    scale = -exponent
    if scale > 255 or not _INT32_MIN <= unscaled <= _INT32_MAX:
        raise LocalProtocolError(f"decimal {v} does not fit AMQP's (scale octet, int32 value) encoding")
    return b"D" + _DECIMAL.pack(scale, unscaled)


# -- decoding -----------------------------------------------------------------------------------------------


def decode_table(buf: bytes, pos: int, stop: int) -> tuple[dict[str, FieldValue], int]:
    """Decode a length-prefixed field table at ``buf[pos:]`` bounded by ``stop``; return ``(table, new_pos)``.

    Raises :class:`RemoteProtocolError` for unknown type tags, truncated data, lengths past the bound or
    nesting deeper than :data:`MAX_DEPTH`.  Keys that are not valid UTF-8 are kept as lone surrogates.
    """
    if pos + 4 > stop:
        raise _truncated("table length")
    end = pos + 4 + _U32.unpack_from(buf, pos)[0]
    if end > stop:
        raise _truncated("table")
    if end == pos + 4:
        return {}, end
    return _table(buf, pos + 4, end, 1), end


def _table(buf: bytes, pos: int, stop: int, depth: int) -> dict[str, FieldValue]:
    if depth > MAX_DEPTH:
        raise RemoteProtocolError(
            f"field table nested deeper than {MAX_DEPTH} levels", ReplyCode.SYNTAX_ERROR
        )
    result: dict[str, FieldValue] = {}
    while pos < stop:
        end = pos + 1 + buf[pos]  # key: a shortstr, inlined
        if end > stop:
            raise _truncated("field name")
        raw = buf[pos + 1 : end]
        try:
            key = raw.decode()
        except UnicodeDecodeError:
            key = lenient_text(raw)
        # the commonest values ('S' strings, 'V' voids) written out; _decode_value does the rest
        tag = buf[end] if end < stop else None
        if tag == 0x53 and end + 5 <= stop:
            pos = end + 5 + _U32.unpack_from(buf, end + 1)[0]
            if pos > stop:
                raise _truncated("long string")
            raw = buf[end + 5 : pos]
            try:
                result[key] = raw.decode()
            except UnicodeDecodeError:
                result[key] = bytes(raw)  # as _decode_value: binary in 'S' stays bytes
        elif tag == 0x56:
            result[key] = None
            pos = end + 1
        else:
            result[key], pos = _decode_value(buf, end, stop, depth)
    return result


def _decode_value(buf: bytes, pos: int, stop: int, depth: int) -> tuple[FieldValue, int]:
    if pos >= stop:
        raise _truncated("field value")
    tag = buf[pos]
    pos += 1
    fixed = _FIXED.get(tag)
    if fixed is not None:
        end = pos + fixed.size
        if end > stop:
            raise _truncated(f"{chr(tag)!r} value")
        return fixed.unpack_from(buf, pos)[0], end
    if tag == 0x53:  # 'S'
        if pos + 4 > stop:
            raise _truncated("long string length")
        end = pos + 4 + _U32.unpack_from(buf, pos)[0]
        if end > stop:
            raise _truncated("long string")
        raw = buf[pos + 4 : end]
        try:
            return raw.decode(), end
        except UnicodeDecodeError:
            return bytes(raw), end  # RabbitMQ uses 'S' for binary too; keep what we cannot decode as bytes
    if tag == 0x74:  # 't'
        if pos >= stop:
            raise _truncated("boolean value")
        return buf[pos] != 0, pos + 1
    if tag == 0x46:  # 'F'
        if pos + 4 > stop:
            raise _truncated("nested table length")
        end = pos + 4 + _U32.unpack_from(buf, pos)[0]
        if end > stop:
            raise _truncated("nested table")
        return _table(buf, pos + 4, end, depth + 1), end
    if tag == 0x41:  # 'A'
        if pos + 4 > stop:
            raise _truncated("array length")
        end = pos + 4 + _U32.unpack_from(buf, pos)[0]
        if end > stop:
            raise _truncated("array")
        if depth + 1 > MAX_DEPTH:
            raise RemoteProtocolError(
                f"field array nested deeper than {MAX_DEPTH} levels", ReplyCode.SYNTAX_ERROR
            )
        items: list[FieldValue] = []
        pos += 4
        while pos < end:
            item, pos = _decode_value(buf, pos, end, depth + 1)
            items.append(item)
        return items, end
    if tag == 0x56:  # 'V'
        return None, pos
    if tag == 0x78:  # 'x'
        return decode_longstr(buf, pos, stop)
    if tag == 0x54:  # 'T'
        if pos + 8 > stop:
            raise _truncated("timestamp value")
        seconds = struct.unpack_from(">Q", buf, pos)[0]
        try:
            return _EPOCH + timedelta(seconds=seconds), pos + 8
        except OverflowError:
            return seconds, pos + 8  # past datetime's year 9999: RabbitMQ relays any uint64, so keep it
    if tag == 0x44:  # 'D'
        if pos + 5 > stop:
            raise _truncated("decimal value")
        scale, unscaled = _DECIMAL.unpack_from(buf, pos)
        return Decimal(unscaled).scaleb(-scale), pos + 5
    raise RemoteProtocolError(
        f"malformed field table: unknown field type {chr(tag)!r} (0x{tag:02x})", ReplyCode.SYNTAX_ERROR
    )
