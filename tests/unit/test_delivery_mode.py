"""``maybe_delivery_mode``: names and numbers to the AMQP delivery mode, with Kombu's arguments."""

from __future__ import annotations

import pytest

from kelp.entity import PERSISTENT_DELIVERY_MODE, TRANSIENT_DELIVERY_MODE, maybe_delivery_mode
from kelp.exceptions import UsageError


def test_names_and_numbers_map_to_the_amqp_mode() -> None:
    assert maybe_delivery_mode("transient") == TRANSIENT_DELIVERY_MODE
    assert maybe_delivery_mode("persistent") == PERSISTENT_DELIVERY_MODE
    assert maybe_delivery_mode(1) == TRANSIENT_DELIVERY_MODE
    assert maybe_delivery_mode(v=2) == PERSISTENT_DELIVERY_MODE


def test_none_gives_the_default() -> None:
    assert maybe_delivery_mode(None) == PERSISTENT_DELIVERY_MODE
    assert maybe_delivery_mode(None, default=None) is None
    assert maybe_delivery_mode(None, None, TRANSIENT_DELIVERY_MODE) == TRANSIENT_DELIVERY_MODE


def test_modes_replaces_the_table_of_names() -> None:
    assert maybe_delivery_mode("keep", {"keep": PERSISTENT_DELIVERY_MODE}) == PERSISTENT_DELIVERY_MODE
    with pytest.raises(UsageError):
        maybe_delivery_mode("persistent", modes={"keep": PERSISTENT_DELIVERY_MODE})
    with pytest.raises(UsageError):
        maybe_delivery_mode("sometimes")
