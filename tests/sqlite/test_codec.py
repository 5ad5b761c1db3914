"""The stored form of properties and headers: the encoding memo never confuses equal-comparing values."""

from __future__ import annotations

import decimal

import pytest

from kelp._broker.malformed import Malformed
from kelp._broker.sqlite._codec import decode, encode


def test_memo_keeps_types_apart() -> None:
    for value in (1, True, 1.0, decimal.Decimal(1), 1, True):
        assert type(decode(encode({"priority": value}))["priority"]) is type(value)


def test_unhashable_values_are_encoded() -> None:
    table = {"list": [1, 2], "table": {"a": None}}
    assert decode(encode(table)) == table
    assert decode(encode(table)) == table


def test_a_tagged_value_kelp_did_not_write_is_malformed() -> None:
    # Written from outside kelp: a clear Malformed, never a KeyError out of the store.
    for text in ('{"h":{"\\u0000kelp":"b","w":"AA=="}}', '{"h":{"\\u0000kelp":"dt","v":"x"}}'):
        with pytest.raises(Malformed):
            decode(text)
