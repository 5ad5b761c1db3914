from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp.amqp import LocalProtocolError, RemoteProtocolError
from kelp.amqp._fields import (
    MAX_DEPTH,
    decode_longstr,
    decode_shortstr,
    decode_table,
    encode_longstr,
    encode_shortstr,
    encode_table,
)


def roundtrip(table: dict[str, Any]) -> dict[str, Any]:
    raw = encode_table(table)
    decoded, end = decode_table(raw, 0, len(raw))
    assert end == len(raw)
    return decoded


def entry(key: str, tag: bytes, payload: bytes) -> bytes:
    body = encode_shortstr(key) + tag + payload
    return struct.pack(">I", len(body)) + body


# -- value strategies ---------------------------------------------------------------------------------------

keys = st.text(max_size=20).filter(lambda k: len(k.encode()) <= 255)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.binary(max_size=30),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.builds(
        lambda digits, scale: Decimal(digits).scaleb(-scale),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.integers(min_value=0, max_value=20),
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)
tables = st.dictionaries(keys, values, max_size=8)


@given(tables)
def test_table_roundtrip(table: dict[str, Any]) -> None:
    assert roundtrip(table) == table


@given(values)
def test_value_types_survive(value: Any) -> None:
    decoded = roundtrip({"v": value})["v"]
    assert decoded == value
    assert type(decoded) is type(value)


def test_empty_and_none_tables() -> None:
    assert encode_table(None) == b"\x00\x00\x00\x00"
    assert encode_table({}) == b"\x00\x00\x00\x00"
    assert decode_table(b"\x00\x00\x00\x00", 0, 4) == ({}, 4)


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (True, b"t"),
        (1, b"I"),
        (-(2**31), b"I"),
        (2**31, b"l"),
        (-(2**63), b"l"),
        (1.5, b"d"),
        (Decimal("1.25"), b"D"),
        ("text", b"S"),
        (b"raw", b"x"),
        ([1], b"A"),
        ((1, 2), b"A"),
        ({"a": 1}, b"F"),
        (None, b"V"),
        (datetime(2020, 1, 1, tzinfo=UTC), b"T"),
    ],
)
def test_encoder_picks_rabbitmq_tags(value: Any, tag: bytes) -> None:
    raw = encode_table({"k": value})
    assert raw[6:7] == tag


@pytest.mark.parametrize(
    ("tag", "payload", "expected"),
    [
        (b"t", b"\x01", True),
        (b"b", b"\xff", -1),
        (b"B", b"\xff", 255),
        (b"s", b"\xff\xfe", -2),
        (b"u", b"\xff\xfe", 65534),
        (b"I", b"\xff\xff\xff\xff", -1),
        (b"i", b"\xff\xff\xff\xff", 2**32 - 1),
        (b"l", b"\xff" * 8, -1),
        (b"f", struct.pack(">f", 0.5), 0.5),
        (b"d", struct.pack(">d", -2.25), -2.25),
        (b"D", b"\x02\x00\x00\x01\x2d", Decimal("3.01")),
        (b"S", b"\x00\x00\x00\x02hi", "hi"),
        (b"S", b"\x00\x00\x00\x02\xff\xfe", b"\xff\xfe"),  # not UTF-8: kept as bytes
        (b"x", b"\x00\x00\x00\x02\x00\x01", b"\x00\x01"),
        (b"T", struct.pack(">Q", 0), datetime(1970, 1, 1, tzinfo=UTC)),
        (b"V", b"", None),
        (b"A", b"\x00\x00\x00\x04Vt\x00V", [None, False, None]),
        (b"F", b"\x00\x00\x00\x00", {}),
    ],
)
def test_decoder_reads_every_rabbitmq_type(tag: bytes, payload: bytes, expected: Any) -> None:
    raw = entry("k", tag, payload)
    assert decode_table(raw, 0, len(raw)) == ({"k": expected}, len(raw))


def test_naive_datetime_is_utc() -> None:
    assert roundtrip({"t": datetime(2021, 5, 6, 7, 8, 9)})["t"] == datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (entry("k", b"Z", b""), "unknown field type 'Z'"),
        (entry("k", b"I", b"\x00\x00"), "runs past the end"),
        (entry("k", b"S", b"\x00\x00\x00\x09abc"), "runs past the end"),
        (entry("k", b"F", b"\x7f\xff\xff\xff"), "runs past the end"),
        (entry("k", b"A", b"\x00\x00\x01\x00"), "runs past the end"),
        (b"\x00\x00\x00\x10\x01k", "runs past the end"),
        (b"\x00\x00", "runs past the end"),
        (b"\x00\x00\x00\x02\x05k", "runs past the end"),  # key length past the table
    ],
)
def test_bad_tables_raise_remote_protocol_error(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_table(raw, 0, len(raw))


def test_table_length_cannot_escape_its_bound() -> None:
    raw = encode_table({"a": 1}) + b"trailing"
    with pytest.raises(RemoteProtocolError):
        decode_table(raw, 0, 6)


def _nested(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        body = encode_shortstr("n") + b"F" + struct.pack(">I", len(inner)) + inner
        inner = body
    return struct.pack(">I", len(inner)) + inner


def test_nesting_limit() -> None:
    ok = _nested(MAX_DEPTH - 1)
    assert decode_table(ok, 0, len(ok))[1] == len(ok)
    deep = _nested(MAX_DEPTH + 1)
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        decode_table(deep, 0, len(deep))


def test_array_nesting_limit() -> None:
    inner = b""
    for _ in range(MAX_DEPTH + 2):
        inner = b"A" + struct.pack(">I", len(inner)) + inner
    raw = entry("a", inner[:1], inner[1:])
    with pytest.raises(RemoteProtocolError, match="nested deeper"):
        decode_table(raw, 0, len(raw))


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63) - 1, object(), Decimal("NaN"), Decimal("1e-300"), Decimal(2**40) / Decimal(1)],
)
def test_unencodable_values_raise_local_protocol_error(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        encode_table({"k": value})


def test_self_referential_table_is_refused() -> None:
    table: dict[str, Any] = {}
    table["self"] = table
    with pytest.raises(LocalProtocolError, match="nested deeper"):
        encode_table(table)


def test_self_referential_array_is_refused() -> None:
    array: list[Any] = []
    array.append(array)
    with pytest.raises(LocalProtocolError, match="nested deeper"):
        encode_table({"a": array})


def test_text_values_keep_escaped_bytes_and_refuse_bare_surrogates() -> None:
    # a str value with a byte kept as a lone surrogate (see lenient_text) is sent as that byte
    assert encode_table({"k": "a\udcffb"}) == entry("k", b"S", b"\x00\x00\x00\x03a\xffb")
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode_table({"k": "\ud800"})
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode_table({"\ud800": 1})


def test_long_key_and_bad_key_type() -> None:
    with pytest.raises(LocalProtocolError, match="too long"):
        encode_table({"k" * 256: 1})
    with pytest.raises(LocalProtocolError, match="keys must be str"):
        encode_table({1: 1})  # type: ignore[dict-item]


def test_pre_epoch_timestamp_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="before 1970"):
        encode_table({"t": datetime(1960, 1, 1, tzinfo=UTC)})


def test_strings() -> None:
    assert decode_shortstr(encode_shortstr("héllo"), 0, 7) == ("héllo", 7)
    assert decode_longstr(encode_longstr("abc"), 0, 7) == (b"abc", 7)
    assert decode_longstr(encode_longstr(b"\x00"), 0, 5) == (b"\x00", 5)
    with pytest.raises(RemoteProtocolError):
        decode_shortstr(b"\x05ab", 0, 3)
    with pytest.raises(RemoteProtocolError):
        decode_shortstr(b"", 0, 0)
    with pytest.raises(RemoteProtocolError):
        decode_longstr(b"\x00\x00\x00\x05ab", 0, 6)
    with pytest.raises(RemoteProtocolError):
        decode_longstr(b"\x00\x00", 0, 2)
