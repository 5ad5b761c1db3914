"""The stored form of properties and headers: the encoding memo never confuses equal-comparing values."""

from __future__ import annotations

import decimal

from kelp._broker.sqlite._codec import decode, encode


def test_memo_keeps_types_apart() -> None:
    for value in (1, True, 1.0, decimal.Decimal(1), 1, True):
        assert type(decode(encode({"priority": value}))["priority"]) is type(value)


def test_unhashable_values_are_encoded() -> None:
    table = {"list": [1, 2], "table": {"a": None}}
    assert decode(encode(table)) == table
    assert decode(encode(table)) == table
