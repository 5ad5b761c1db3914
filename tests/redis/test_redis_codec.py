"""The stored form of a message's properties and headers gives back what was published (no server needed)."""

from __future__ import annotations

import datetime
import decimal

from hypothesis import given
from hypothesis import strategies as st

from kelp._broker.redis.codec import decode_arguments, decode_meta, encode_arguments, encode_meta

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=20),
    st.datetimes(),
    st.decimals(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), values, max_size=5), st.text(), st.text())
def test_meta_round_trips(headers, exchange, routing_key):
    properties = {"content_type": "application/json", "priority": 3, "expiration": "100"}
    assert decode_meta(encode_meta(properties, headers, exchange, routing_key)) == (
        properties,
        headers,
        exchange,
        routing_key,
    )


def test_tagged_values_come_back_typed():
    headers = {
        "raw": b"\x00\xff",
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "day": datetime.date(2024, 5, 1),
        "price": decimal.Decimal("9.99"),
        "tags": frozenset({"a", "b"}),
        "text with nul": "a\x00b",
    }
    _, decoded, _, _ = decode_meta(encode_meta({}, headers, "", ""))
    assert decoded == headers
    assert isinstance(decoded["raw"], bytes)


def test_arguments_text_is_canonical():
    assert encode_arguments({"b": 1, "a": [1, 2]}) == encode_arguments({"a": (1, 2), "b": 1})
    assert encode_arguments(None) == encode_arguments({}) == "{}"
    assert decode_arguments(encode_arguments({"x-match": "any", "k": b"v"})) == {"x-match": "any", "k": b"v"}


def test_a_users_table_keyed_like_a_tag_comes_back_as_it_was():
    headers = {"a": {"\x00d": "1.5"}, "b": [{"\x00b": "eA=="}], "c": {"\x00e": [1, 2]}, "d": b"\x00"}
    assert decode_meta(encode_meta({}, headers, "", ""))[1] == headers
