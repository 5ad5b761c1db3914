"""How message properties and headers are stored: compact JSON with tagged forms for non-JSON values.

Headers are AMQP tables: str keys; str, int, float, bool, None, lists and nested tables as values. JSON
keeps all of those apart (``1``, ``1.0`` and ``true`` stay distinct). ``bytes``, ``datetime`` and
``Decimal`` values are stored as a one-key object tagged with a NUL-prefixed key that no application
header can collide with in practice; tuples come back as lists, as they do from RabbitMQ.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from typing import Any

from kelp._broker.malformed import Malformed
from kelp.exceptions import EncodeError

__all__ = ["decode", "encode"]

_TAG = "\x00kelp"
_TAG_IN_TEXT = "\\u0000kelp"
_MEMO_SIZE = 512


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_TAG: "b", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {_TAG: "dt", "v": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "dec", "v": str(value)}
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"a value of type {type(value).__name__} cannot be stored in message headers")


def _hook(obj: dict[str, Any]) -> Any:
    kind = obj.get(_TAG)
    if kind is None or len(obj) != 2:
        return obj
    value = obj["v"]
    if kind == "b":
        return base64.b64decode(value)
    if kind == "dt":
        return datetime.datetime.fromisoformat(value)
    if kind == "dec":
        return decimal.Decimal(value)
    return obj


_encoder = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False, check_circular=False)
_decode_memo: dict[str, dict[str, Any]] = {}


_encode_memo: dict[tuple[tuple[str, Any], ...], str] = {}
_MEMO_TYPES = frozenset({str, int, type(None)})


def encode(table: dict[str, Any]) -> str:
    """The stored form of a properties or headers table; raises EncodeError for an unstorable value."""
    # Producers send the same few property tables over and over: remember their text. Only tables whose
    # values are exactly str, int or None are remembered; between those types equal values have equal
    # types, so checking the probe's types on a hit keeps 1, 1.0 and True apart.
    items = tuple(table.items())
    key: tuple[tuple[str, Any], ...] | None = items
    try:
        text = _encode_memo.get(items)
    except TypeError:  # an unhashable value (list, dict): never memoised
        text = None
        key = None
    if text is not None and _MEMO_TYPES.issuperset(map(type, table.values())):
        return text
    try:
        text = _encoder.encode(table)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"cannot store message properties/headers: {exc}") from None
    if key is not None and _MEMO_TYPES.issuperset(map(type, table.values())):
        if len(_encode_memo) >= _MEMO_SIZE:
            _encode_memo.clear()
        _encode_memo[key] = text
    return text


def decode(text: str | None) -> dict[str, Any]:
    """A fresh dict from the stored form (callers may mutate what they get); raises Malformed when the
    text is not a table kelp wrote (a row written from outside kelp)."""
    if not text:
        return {}
    cached = _decode_memo.get(text)
    if cached is not None:
        return dict(cached)
    try:
        value = json.loads(text, object_hook=_hook) if _TAG_IN_TEXT in text else json.loads(text)
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError) as exc:
        raise Malformed(f"stored properties/headers are not kelp's JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Malformed(f"stored properties/headers are not a table: {type(value).__name__}")
    if len(text) < 512 and not any(isinstance(v, dict | list) for v in value.values()):
        if len(_decode_memo) >= _MEMO_SIZE:
            _decode_memo.clear()
        _decode_memo[text] = value
        return dict(value)
    return value
