"""AMQP 0-9-1 method definitions as data, and the codecs generated from them.

:data:`METHODS` is the single table of every method kelp knows: class id, method id, dotted name, field list
with AMQP domain types, whether content follows, and which replies a synchronous request expects.  The generic
encoder/decoder is compiled from it once at import.  The few methods on the hot path (``basic.publish``,
``basic.deliver``, ``basic.ack``) also get hand-written codecs below; tests check they agree byte for byte
with the generic ones.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode
from ._fields import (
    decode_longstr,
    decode_shortstr,
    decode_table,
    encode_longstr,
    encode_shortstr,
    encode_table,
    encode_text,
    lenient_text,
)

__all__ = [
    "DOMAINS",
    "METHODS",
    "METHODS_BY_KEY",
    "METHODS_BY_NAME",
    "MethodDef",
    "decode_basic_ack",
    "decode_basic_deliver",
    "decode_method",
    "encode_basic_ack",
    "encode_basic_publish",
    "encode_method",
    "method_key",
]

# AMQP domain types used in field lists.
BIT, OCTET, SHORT, LONG, LONGLONG = "bit", "octet", "short", "long", "longlong"
SHORTSTR, LONGSTR, TABLE, TIMESTAMP = "shortstr", "longstr", "table", "timestamp"
DOMAINS = frozenset({BIT, OCTET, SHORT, LONG, LONGLONG, SHORTSTR, LONGSTR, TABLE, TIMESTAMP})

_NUMERIC = {OCTET: ">B", SHORT: ">H", LONG: ">I", LONGLONG: ">Q", TIMESTAMP: ">Q"}


def method_key(class_id: int, method_id: int) -> int:
    """The integer that identifies a method on the wire: its first four payload bytes as one uint32."""
    return (class_id << 16) | method_id


@dataclass(frozen=True, slots=True)
class MethodDef:
    """One AMQP method: where it lives on the wire and what it carries."""

    class_id: int
    method_id: int
    name: str
    fields: tuple[tuple[str, str], ...]
    content: bool = False
    replies: tuple[str, ...] = ()
    _steps: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)

    @property
    def key(self) -> int:
        return method_key(self.class_id, self.method_id)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


def _m(class_id: int, method_id: int, name: str, fields: str = "", *, content: bool = False,
       replies: str = "") -> MethodDef:  # fmt: skip
    parsed = tuple((f.split(":")[0], f.split(":")[1]) for f in fields.split())
    for fname, domain in parsed:
        if domain not in DOMAINS:
            raise AssertionError(f"{name}.{fname}: unknown domain {domain}")
    return MethodDef(class_id, method_id, name, parsed, content, tuple(replies.split()), _compile(parsed))


def _compile(fields: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Any], ...]:
    """Turn a field list into codec steps; runs of up to 8 consecutive bits share one octet."""
    steps: list[tuple[str, Any]] = []
    i = 0
    while i < len(fields):
        domain = fields[i][1]
        if domain == BIT:
            j = i
            while j < len(fields) and fields[j][1] == BIT and j - i < 8:
                j += 1
            steps.append((BIT, j - i))
            i = j
            continue
        steps.append((domain, struct.Struct(_NUMERIC[domain]) if domain in _NUMERIC else None))
        i += 1
    return tuple(steps)


_CLOSE = "reply_code:short reply_text:shortstr class_id:short method_id:short"

# fmt: off
METHODS: tuple[MethodDef, ...] = (
    _m(10, 10, "connection.start",
       "version_major:octet version_minor:octet server_properties:table mechanisms:longstr locales:longstr",
       replies="connection.start-ok"),
    _m(10, 11, "connection.start-ok",
       "client_properties:table mechanism:shortstr response:longstr locale:shortstr"),
    _m(10, 20, "connection.secure", "challenge:longstr", replies="connection.secure-ok"),
    _m(10, 21, "connection.secure-ok", "response:longstr"),
    _m(10, 30, "connection.tune", "channel_max:short frame_max:long heartbeat:short",
       replies="connection.tune-ok"),
    _m(10, 31, "connection.tune-ok", "channel_max:short frame_max:long heartbeat:short"),
    _m(10, 40, "connection.open", "virtual_host:shortstr reserved_1:shortstr reserved_2:bit",
       replies="connection.open-ok"),
    _m(10, 41, "connection.open-ok", "reserved_1:shortstr"),
    _m(10, 50, "connection.close", _CLOSE, replies="connection.close-ok"),
    _m(10, 51, "connection.close-ok"),
    _m(10, 60, "connection.blocked", "reason:shortstr"),
    _m(10, 61, "connection.unblocked"),
    _m(10, 70, "connection.update-secret", "new_secret:longstr reason:shortstr",
       replies="connection.update-secret-ok"),
    _m(10, 71, "connection.update-secret-ok"),

    _m(20, 10, "channel.open", "reserved_1:shortstr", replies="channel.open-ok"),
    _m(20, 11, "channel.open-ok", "reserved_1:longstr"),
    _m(20, 20, "channel.flow", "active:bit", replies="channel.flow-ok"),
    _m(20, 21, "channel.flow-ok", "active:bit"),
    _m(20, 40, "channel.close", _CLOSE, replies="channel.close-ok"),
    _m(20, 41, "channel.close-ok"),

    _m(30, 10, "access.request",
       "realm:shortstr exclusive:bit passive:bit active:bit write:bit read:bit", replies="access.request-ok"),
    _m(30, 11, "access.request-ok", "reserved_1:short"),

    _m(40, 10, "exchange.declare",
       "reserved_1:short exchange:shortstr type:shortstr passive:bit durable:bit auto_delete:bit internal:bit"
       " no_wait:bit arguments:table", replies="exchange.declare-ok"),
    _m(40, 11, "exchange.declare-ok"),
    _m(40, 20, "exchange.delete", "reserved_1:short exchange:shortstr if_unused:bit no_wait:bit",
       replies="exchange.delete-ok"),
    _m(40, 21, "exchange.delete-ok"),
    _m(40, 30, "exchange.bind",
       "reserved_1:short destination:shortstr source:shortstr routing_key:shortstr no_wait:bit"
       " arguments:table",
       replies="exchange.bind-ok"),
    _m(40, 31, "exchange.bind-ok"),
    _m(40, 40, "exchange.unbind",
       "reserved_1:short destination:shortstr source:shortstr routing_key:shortstr no_wait:bit"
       " arguments:table",
       replies="exchange.unbind-ok"),
    _m(40, 51, "exchange.unbind-ok"),

    _m(50, 10, "queue.declare",
       "reserved_1:short queue:shortstr passive:bit durable:bit exclusive:bit auto_delete:bit no_wait:bit"
       " arguments:table", replies="queue.declare-ok"),
    _m(50, 11, "queue.declare-ok", "queue:shortstr message_count:long consumer_count:long"),
    _m(50, 20, "queue.bind",
       "reserved_1:short queue:shortstr exchange:shortstr routing_key:shortstr no_wait:bit arguments:table",
       replies="queue.bind-ok"),
    _m(50, 21, "queue.bind-ok"),
    _m(50, 30, "queue.purge", "reserved_1:short queue:shortstr no_wait:bit", replies="queue.purge-ok"),
    _m(50, 31, "queue.purge-ok", "message_count:long"),
    _m(50, 40, "queue.delete", "reserved_1:short queue:shortstr if_unused:bit if_empty:bit no_wait:bit",
       replies="queue.delete-ok"),
    _m(50, 41, "queue.delete-ok", "message_count:long"),
    _m(50, 50, "queue.unbind",
       "reserved_1:short queue:shortstr exchange:shortstr routing_key:shortstr arguments:table",
       replies="queue.unbind-ok"),
    _m(50, 51, "queue.unbind-ok"),

    _m(60, 10, "basic.qos", "prefetch_size:long prefetch_count:short global:bit", replies="basic.qos-ok"),
    _m(60, 11, "basic.qos-ok"),
    _m(60, 20, "basic.consume",
       "reserved_1:short queue:shortstr consumer_tag:shortstr no_local:bit no_ack:bit exclusive:bit"
       " no_wait:bit arguments:table", replies="basic.consume-ok"),
    _m(60, 21, "basic.consume-ok", "consumer_tag:shortstr"),
    _m(60, 30, "basic.cancel", "consumer_tag:shortstr no_wait:bit", replies="basic.cancel-ok"),
    _m(60, 31, "basic.cancel-ok", "consumer_tag:shortstr"),
    _m(60, 40, "basic.publish",
       "reserved_1:short exchange:shortstr routing_key:shortstr mandatory:bit immediate:bit", content=True),
    _m(60, 50, "basic.return", "reply_code:short reply_text:shortstr exchange:shortstr routing_key:shortstr",
       content=True),
    _m(60, 60, "basic.deliver",
       "consumer_tag:shortstr delivery_tag:longlong redelivered:bit exchange:shortstr routing_key:shortstr",
       content=True),
    _m(60, 70, "basic.get", "reserved_1:short queue:shortstr no_ack:bit",
       replies="basic.get-ok basic.get-empty"),
    _m(60, 71, "basic.get-ok",
       "delivery_tag:longlong redelivered:bit exchange:shortstr routing_key:shortstr message_count:long",
       content=True),
    _m(60, 72, "basic.get-empty", "reserved_1:shortstr"),
    _m(60, 80, "basic.ack", "delivery_tag:longlong multiple:bit"),
    _m(60, 90, "basic.reject", "delivery_tag:longlong requeue:bit"),
    _m(60, 100, "basic.recover-async", "requeue:bit"),
    _m(60, 110, "basic.recover", "requeue:bit", replies="basic.recover-ok"),
    _m(60, 111, "basic.recover-ok"),
    _m(60, 120, "basic.nack", "delivery_tag:longlong multiple:bit requeue:bit"),

    _m(85, 10, "confirm.select", "nowait:bit", replies="confirm.select-ok"),
    _m(85, 11, "confirm.select-ok"),

    _m(90, 10, "tx.select", replies="tx.select-ok"),
    _m(90, 11, "tx.select-ok"),
    _m(90, 20, "tx.commit", replies="tx.commit-ok"),
    _m(90, 21, "tx.commit-ok"),
    _m(90, 30, "tx.rollback", replies="tx.rollback-ok"),
    _m(90, 31, "tx.rollback-ok"),
)
# fmt: on

METHODS_BY_KEY: dict[int, MethodDef] = {m.key: m for m in METHODS}
METHODS_BY_NAME: dict[str, MethodDef] = {m.name: m for m in METHODS}

_HEAD = struct.Struct(">HH")
_KEY = struct.Struct(">I")


# -- generic codec ------------------------------------------------------------------------------------------


def encode_method(method: MethodDef, args: Sequence[Any]) -> bytes:
    """Encode ``method`` with ``args`` (one per field, in table order) into a method-frame payload."""
    if len(args) != len(method.fields):
        raise LocalProtocolError(f"{method.name} takes {len(method.fields)} arguments, got {len(args)}")
    parts = [_HEAD.pack(method.class_id, method.method_id)]
    i = 0
    try:
        for domain, aux in method._steps:
            if domain == BIT:
                octet = 0
                for bit in range(aux):
                    if args[i + bit]:
                        octet |= 1 << bit
                parts.append(bytes((octet,)))
                i += aux
                continue
            value = args[i]
            i += 1
            if aux is not None:
                parts.append(aux.pack(value))
            elif domain == SHORTSTR:
                parts.append(encode_shortstr(value))
            elif domain == LONGSTR:
                parts.append(encode_longstr(value))
            else:
                parts.append(encode_table(value))
    except (struct.error, TypeError, AttributeError) as exc:
        name = method.fields[i - 1][0] if i else "?"
        raise LocalProtocolError(f"{method.name}: bad value for field {name!r}: {exc}") from None
    return b"".join(parts)


def decode_method(payload: bytes) -> tuple[MethodDef, tuple[Any, ...]]:
    """Decode a method-frame payload into ``(method, args)``.

    Raises :class:`RemoteProtocolError` for unknown methods, truncated payloads and trailing garbage.
    """
    if len(payload) < 4:
        raise RemoteProtocolError(
            "method frame too short to hold class and method ids", ReplyCode.FRAME_ERROR
        )
    key = _KEY.unpack_from(payload, 0)[0]
    method = METHODS_BY_KEY.get(key)
    if method is None:
        raise RemoteProtocolError(
            f"unknown method class {key >> 16} method {key & 0xFFFF}", ReplyCode.NOT_IMPLEMENTED
        )
    return method, decode_args(method, payload, 4)


def decode_args(method: MethodDef, payload: bytes, pos: int) -> tuple[Any, ...]:
    stop = len(payload)
    args: list[Any] = []
    for domain, aux in method._steps:
        if domain == BIT:
            if pos >= stop:
                raise _short(method)
            octet = payload[pos]
            pos += 1
            args.extend(bool(octet & (1 << bit)) for bit in range(aux))
        elif aux is not None:
            if pos + aux.size > stop:
                raise _short(method)
            args.append(aux.unpack_from(payload, pos)[0])
            pos += aux.size
        elif domain == SHORTSTR:
            value, pos = decode_shortstr(payload, pos, stop)
            args.append(value)
        elif domain == LONGSTR:
            raw, pos = decode_longstr(payload, pos, stop)
            args.append(raw)
        else:
            table, pos = decode_table(payload, pos, stop)
            args.append(table)
    if pos != stop:
        raise RemoteProtocolError(
            f"{method.name}: {stop - pos} unexpected trailing bytes", ReplyCode.FRAME_ERROR
        )
    return tuple(args)


def _short(method: MethodDef) -> RemoteProtocolError:
    return RemoteProtocolError(f"{method.name}: method frame is truncated", ReplyCode.FRAME_ERROR)


# -- hot paths ----------------------------------------------------------------------------------------------

BASIC_PUBLISH_KEY = method_key(60, 40)
BASIC_DELIVER_KEY = method_key(60, 60)
BASIC_ACK_KEY = method_key(60, 80)
BASIC_NACK_KEY = method_key(60, 120)

_PUBLISH_HEAD = b"\x00\x3c\x00\x28\x00\x00"  # class 60, method 40, reserved ticket 0
_ACK = struct.Struct(">HHQB")
_ACK_ARGS = struct.Struct(">QB")
_TAG_BIT = struct.Struct(">QB")
_U8 = struct.Struct(">B").pack
_BIT_OCTETS = (b"\x00", b"\x01", b"\x02", b"\x03")


def encode_basic_publish(exchange: str, routing_key: str, mandatory: bool, immediate: bool) -> bytes:
    """``basic.publish`` method payload (hand-written equivalent of the generic encoder)."""
    ex = encode_text(exchange)
    rk = encode_text(routing_key)
    if len(ex) > 255 or len(rk) > 255:
        raise LocalProtocolError("exchange and routing key must each be at most 255 bytes of UTF-8")
    bits = _BIT_OCTETS[(1 if mandatory else 0) | (2 if immediate else 0)]
    return b"".join((_PUBLISH_HEAD, _U8(len(ex)), ex, _U8(len(rk)), rk, bits))


def encode_basic_ack(delivery_tag: int, multiple: bool) -> bytes:
    """``basic.ack`` method payload."""
    try:
        return _ACK.pack(60, 80, delivery_tag, 1 if multiple else 0)
    except struct.error:
        raise LocalProtocolError(f"delivery tag {delivery_tag} is not a uint64") from None


def decode_basic_ack(payload: bytes) -> tuple[int, bool]:
    """``(delivery_tag, multiple)`` from a ``basic.ack`` payload."""
    if len(payload) != 13:
        raise RemoteProtocolError("basic.ack: bad method frame length", ReplyCode.FRAME_ERROR)
    tag, bits = _ACK_ARGS.unpack_from(payload, 4)
    return tag, bool(bits & 1)


def decode_basic_deliver(payload: bytes) -> tuple[str, int, bool, str, str]:
    """``(consumer_tag, delivery_tag, redelivered, exchange, routing_key)`` of a ``basic.deliver`` payload.

    Names that are not valid UTF-8 keep their bytes as lone surrogates, as every shortstr does: RabbitMQ
    does not check the routing key a foreign publisher sent.
    """
    try:
        end = 5 + payload[4]
        consumer_tag = payload[5:end]
        delivery_tag, bits = _TAG_BIT.unpack_from(payload, end)
        pos = end + 10
        end = pos + payload[pos - 1]
        exchange = payload[pos:end]
        pos = end + 1
        end = pos + payload[end]
        routing_key = payload[pos:end]
    except (IndexError, struct.error):
        raise RemoteProtocolError("basic.deliver: malformed method frame", ReplyCode.FRAME_ERROR) from None
    if end != len(payload):
        raise RemoteProtocolError("basic.deliver: bad method frame length", ReplyCode.FRAME_ERROR)
    try:
        return consumer_tag.decode(), delivery_tag, bool(bits & 1), exchange.decode(), routing_key.decode()
    except UnicodeDecodeError:
        return (
            lenient_text(consumer_tag),
            delivery_tag,
            bool(bits & 1),
            lenient_text(exchange),
            lenient_text(routing_key),
        )
