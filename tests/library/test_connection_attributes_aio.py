"""Kombu's Connection attributes on the asyncio face: the transport exists before connecting,
``connection`` needs a connected connection, ``switch`` closes and changes the URL."""

from __future__ import annotations

import pytest

from kelp.aio import Connection, Queue
from kelp.exceptions import OperationalError


async def test_transport_and_connection_before_and_after_connecting(url: str) -> None:
    conn = Connection(url)
    assert conn.transport.driver_type == "memory"
    assert conn.transport.client is conn
    with pytest.raises(OperationalError):
        conn.connection  # noqa: B018 - kelp.aio does not connect on attribute access
    async with conn:
        assert conn.connection is conn.transport
        assert conn.transport.is_connected
        assert conn.qos_semantics_matches_spec is False


async def test_switch_closes_and_uses_the_new_url(url: str) -> None:
    conn = Connection(url)
    await conn.connect()
    await conn.switch("memory://elsewhere-aio")
    assert not conn.connected
    assert conn.hostname == "elsewhere-aio"
    async with conn:
        await Queue("switched")(conn.default_channel).declare()
        assert conn.transport.info()["url"].startswith("memory://elsewhere-aio")
    assert conn.clone().hostname == "elsewhere-aio"
