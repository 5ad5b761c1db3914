"""How the ``redis://`` transport writes messages, arguments and bindings into Redis (pure code, no I/O).

* **meta** — a message's properties, headers, exchange and routing key, as one JSON array. JSON cannot hold
  every AMQP table value, so bytes, datetimes, decimals and sets are written as one-key objects whose key
  starts with NUL (``{"\\u0000b": "<base64>"}``) and turned back on decoding; tuples come back as lists.
  Nothing here can execute code: decoding is ``json.loads`` plus those four constructors.
* **canonical values** — headers-exchange matching runs in Lua, which cannot compare Python values the way
  :func:`kelp.routing.headers_match` does (typed: ``True`` is not ``1``, ``"1"`` is not ``1``, but ``1``
  equals ``1.0`` and a list equals a tuple). :func:`canon` maps a value to a string such that two values
  get the same string exactly when kelp.routing considers them equal, and Lua compares strings.
* **binding members** — one JSON array per binding ``[kind, destination, routing_key, arguments, any,
  items]``, the same text for the same binding so that a Redis set makes binding idempotent; ``any`` and
  ``items`` are the headers rule, precomputed here from the arguments (see :func:`headers_rule`).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Mapping
from typing import Any

from kelp._broker.malformed import Malformed, check_properties
from kelp.routing import X_MATCH_MODES

__all__ = [
    "binding_member",
    "canon",
    "decode_arguments",
    "decode_meta",
    "encode_arguments",
    "encode_meta",
    "headers_canon",
    "headers_rule",
]

_BYTES = "\x00b"
_DATETIME = "\x00t"
_DATE = "\x00D"
_DECIMAL = "\x00d"
_SET = "\x00s"
_ESCAPED = "\x00e"  # a user's own one-key table whose key starts with NUL: [key, value]


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, datetime.date):
        return {_DATE: value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {_DECIMAL: str(value)}
    if isinstance(value, set | frozenset):
        return {_SET: list(value)}
    if isinstance(value, Mapping):  # kelp.routing.Arguments and other read-only mappings
        return dict(value)
    raise TypeError(f"a message header or property of type {type(value).__name__} cannot be stored")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        key, value = next(iter(obj.items()))
        if key[:1] == "\x00":
            if key == _BYTES:
                return base64.b64decode(value)
            if key == _DATETIME:
                return datetime.datetime.fromisoformat(value)
            if key == _DATE:
                return datetime.date.fromisoformat(value)
            if key == _DECIMAL:
                return decimal.Decimal(value)
            if key == _SET:
                return frozenset(value)
            if key == _ESCAPED and isinstance(value, list) and len(value) == 2:
                return {value[0]: value[1]}
    return obj


def _escaped(value: Any) -> Any:
    """``value`` with every one-key table whose key starts with NUL wrapped, so that decoding cannot
    take a user's table for one of the tags above."""
    if isinstance(value, Mapping):
        items = {key: _escaped(each) for key, each in value.items()}
        if len(items) == 1:
            key, each = next(iter(items.items()))
            if isinstance(key, str) and key[:1] == "\x00":
                return {_ESCAPED: [key, each]}
        return items
    if isinstance(value, list | tuple):
        return [_escaped(each) for each in value]
    return value


def _encode(encoder: json.JSONEncoder, value: Any) -> str:
    text = encoder.encode(value)
    # Rare: a NUL written as \u0000 comes from a tag or from a user's text; only then look for tables
    # that could pass for a tag.
    return encoder.encode(_escaped(value)) if "\\u0000" in text else text


_encoder = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)
_sorted_encoder = json.JSONEncoder(
    default=_default, separators=(",", ":"), ensure_ascii=False, sort_keys=True
)
_decoder = json.JSONDecoder(object_hook=_hook)
_plain_decoder = json.JSONDecoder()


def encode_meta(
    properties: Mapping[str, Any], headers: Mapping[str, Any], exchange: str, routing_key: str
) -> bytes:
    """The stored form of everything about a message except its body."""
    return _encode(_encoder, [properties, headers, exchange, routing_key]).encode()


def decode_meta(raw: bytes) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """``(properties, headers, exchange, routing_key)`` from :func:`encode_meta`'s output; raises Malformed
    for anything else (an entry written from outside kelp)."""
    if not raw:
        raise Malformed("the entry lacks its body or its meta (fields b, m)")
    try:
        text = raw.decode()
        # Tagged values are objects whose key starts with NUL, which JSON writes as \u0000: without one,
        # the plain (faster) decoder gives the same result.
        decoded = _decoder.decode(text) if "\\u0000" in text else _plain_decoder.decode(text)
        properties, headers, exchange, routing_key = decoded
    except (ValueError, TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
        raise Malformed(f"stored meta is not kelp's: {exc}") from None
    if (
        type(properties) is not dict
        or type(headers) is not dict
        or type(exchange) is not str
        or type(routing_key) is not str
    ):
        raise Malformed("stored meta is not [properties, headers, exchange, routing key]")
    check_properties(properties)
    return properties, headers, exchange, routing_key


def encode_arguments(arguments: Mapping[str, Any] | None) -> str:
    """Declaration arguments as canonical text: equal text means equal arguments (for redeclarations)."""
    if not arguments:
        return "{}"
    return _encode(_sorted_encoder, dict(arguments))


def decode_arguments(text: str) -> dict[str, Any]:
    value = _decoder.decode(text)
    return value if isinstance(value, dict) else {}


def canon(value: Any) -> str:
    """A string equal for two values exactly when kelp.routing's headers matching calls them equal."""
    if value is None:
        return "n"
    if isinstance(value, bool):
        return "b1" if value else "b0"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, float):
        if value.is_integer():
            return f"i{int(value)}"
        return f"f{value!r}"
    if isinstance(value, decimal.Decimal):
        if value == value.to_integral_value():
            return f"i{int(value)}"
        as_float = float(value)
        return f"f{as_float!r}" if decimal.Decimal(as_float) == value else f"d{value.normalize()}"
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, bytes | bytearray | memoryview):
        return "y" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return "l" + json.dumps([canon(item) for item in value], ensure_ascii=False)
    if isinstance(value, Mapping):
        pairs = sorted((str(key), canon(item)) for key, item in value.items())
        return "m" + json.dumps(pairs, ensure_ascii=False)
    return "o" + repr(value)


def headers_canon(headers: Mapping[str, Any] | None) -> str:
    """A message's headers for Lua: a JSON object of header name -> :func:`canon` value ("" if none)."""
    if not headers:
        return ""
    return json.dumps({str(key): canon(value) for key, value in headers.items()}, ensure_ascii=False)


def headers_rule(arguments: Mapping[str, Any] | None) -> tuple[int, list[list[Any]]]:
    """``(any, [[name, canon value or False for "present"], ...])``: kelp.routing's headers rule, for Lua.

    Raises ValueError for an invalid ``x-match``, with kelp.routing's message.
    """
    args = arguments or {}
    mode = args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    if mode not in X_MATCH_MODES:
        known = ", ".join(sorted(X_MATCH_MODES))
        raise ValueError(f"invalid x-match value {mode!r} in a headers binding; expected one of: {known}")
    with_x = mode.endswith("-with-x")
    items: list[list[Any]] = [
        [key, False if value is None else canon(value)]
        for key, value in args.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    ]
    return (1 if mode.startswith("any") else 0), items


def binding_member(
    kind: str, destination: str, routing_key: str, arguments: Mapping[str, Any] | None
) -> tuple[str, str]:
    """``(member, rule_error)``: the stored text of one binding, and why its headers rule is invalid ("")."""
    try:
        any_, items = headers_rule(arguments)
        error = ""
    except ValueError as exc:
        any_, items, error = 0, [], str(exc)
    member = json.dumps(
        [kind, destination, routing_key, encode_arguments(arguments), any_, items],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return member, error
