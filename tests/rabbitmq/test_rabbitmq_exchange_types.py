"""amqp:// passes exchange types kelp does not route (RabbitMQ plugins) through to the node."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import kelp
from kelp.exceptions import KelpError, UsageError


@pytest.mark.parametrize("kind", ["x-consistent-hash", "x-delayed-message"])
def test_a_plugin_type_reaches_the_node(amqp_url: str, names: Callable[[str], str], kind: str) -> None:
    name = names("plugin")
    arguments = {"x-delayed-type": "direct"} if kind == "x-delayed-message" else {}
    with kelp.Connection(amqp_url) as conn:
        assert conn.supports_exchange_type(kind)
        exchange = kelp.Exchange(name, kind, arguments=arguments, auto_delete=True)
        refusal = _declare(conn, exchange)
        # Declared (the node has the plugin), or refused by RabbitMQ itself (COMMAND_INVALID), not by kelp.
        assert refusal is None or "exchange type" in refusal or "503" in refusal, refusal


def _declare(conn: kelp.Connection, exchange: kelp.Exchange) -> str | None:
    try:
        exchange(conn.channel()).declare()
    except UsageError:  # kelp refused it itself: not passed through
        raise
    except KelpError as exc:
        return str(exc)
    exchange(conn.channel()).declare(passive=True)
    return None
