"""Running one scenario under a library (Kombu or kelp) and reducing what it observed to plain data.

A scenario is ``scenario(lib, conn, names) -> result``: ``lib`` is the library's namespace (Kombu's or
kelp's names: ``Exchange``, ``Queue``, ``Producer``, ``Consumer``, ``common``, ``exceptions``...), ``conn``
a connected ``Connection``, ``names("q")`` a unique entity name. The result is made comparable by
:func:`plain`: entity names go back to their logical prefix, messages become :func:`observe` dicts, and
exceptions their class name.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import kombu
import kombu.common
import kombu.exceptions

import kelp
import kelp.common
import kelp.exceptions

Scenario = Callable[[Any, Any, "Names"], Any]

KOMBU = SimpleNamespace(
    name="kombu",
    Connection=kombu.Connection,
    Exchange=kombu.Exchange,
    Queue=kombu.Queue,
    Producer=kombu.Producer,
    Consumer=kombu.Consumer,
    binding=kombu.binding,
    common=kombu.common,
    exceptions=kombu.exceptions,
)
KELP = SimpleNamespace(
    name="kelp",
    Connection=kelp.Connection,
    Exchange=kelp.Exchange,
    Queue=kelp.Queue,
    Producer=kelp.Producer,
    Consumer=kelp.Consumer,
    binding=kelp.binding,
    common=kelp.common,
    exceptions=kelp.exceptions,
)

#: Message properties compared (the ones an application sets or reads).
PROPERTIES = (
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "app_id",
    "timestamp",
    "user_id",
)


class Names:
    """``names("q")`` makes a unique name; :meth:`logical` maps every such name back to ``q#n``."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}

    def __call__(self, prefix: str) -> str:
        real = f"diff-{prefix}-{uuid.uuid4().hex[:10]}"
        self.made[real] = f"{prefix}#{len(self.made)}"
        return real

    def logical(self, text: str) -> str:
        for real, logical in self.made.items():
            text = text.replace(real, logical)
        return text


class Failed:
    """An exception a step raised, compared by class name."""

    def __init__(self, exc: BaseException) -> None:
        self.name = type(exc).__name__

    def __repr__(self) -> str:
        return f"<raised {self.name}>"


def attempt(step: Callable[[], Any]) -> Any:
    """The step's result, or :class:`Failed` with the class of what it raised."""
    try:
        return step()
    except Exception as exc:
        return Failed(exc)


def observe(message: Any) -> dict[str, Any] | None:
    """What an application sees of a received message."""
    if message is None:
        return None
    properties = message.properties or {}
    return {
        "body": attempt(lambda: message.payload),
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": dict(message.headers or {}),
        "properties": {key: properties[key] for key in PROPERTIES if properties.get(key) is not None},
        "delivery_info": {
            key: message.delivery_info.get(key) for key in ("exchange", "routing_key", "redelivered")
        },
    }


def plain(value: Any, names: Names) -> Any:
    """``value`` as comparable plain data (see the module docstring)."""
    if isinstance(value, Failed):
        return ("raised", value.name)
    if isinstance(value, BaseException):
        return ("raised", type(value).__name__)
    if isinstance(value, str):
        return names.logical(value)
    if isinstance(value, bytes):
        return ("bytes", names.logical(value.decode("latin-1")))
    if isinstance(value, dict):
        return {plain(k, names): plain(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, names) for v in value]
    if isinstance(value, datetime.datetime):
        # Only the type: the second differs between runs, and py-amqp's are naive where kelp's are UTC
        # (docs/migrating-from-kombu.md).
        return "datetime"
    if hasattr(value, "delivery_info") and hasattr(value, "properties"):
        return plain(observe(value), names)
    return value


def run(lib: Any, url: str, scenario: Scenario) -> Any:
    """Run ``scenario`` under ``lib`` on ``url``; its result as plain data. Entities it named are
    deleted afterwards (the reference broker is shared)."""
    names = Names()
    try:
        with lib.Connection(url) as conn:
            result = scenario(lib, conn, names)
            return plain(result, names)
    finally:
        _cleanup(lib, url, names)


def _cleanup(lib: Any, url: str, names: Names) -> None:
    if not names.made:
        return
    try:
        with lib.Connection(url) as conn:
            for real in names.made:
                for delete in ("queue_delete", "exchange_delete"):
                    try:
                        getattr(conn.channel(), delete)(real)
                    except Exception:  # cleanup must never fail a test
                        pass
    except Exception:
        pass
