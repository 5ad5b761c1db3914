"""The face-independent half of the differential harness: Kombu's namespace, reducing what a scenario
observed to plain data, and the reference results (Kombu on RabbitMQ), computed once per scenario.

A scenario is ``scenario(lib, conn, names, *args) -> result``, written once as a coroutine function in
``aio/`` and generated into ``sync/`` by ``scripts/unasync.py``. ``lib`` is a library's namespace (Kombu's or
kelp's names: ``Exchange``, ``Queue``, ``Producer``, ``Consumer``, ``common``, ``exceptions``...), ``conn`` a
``Connection`` in its ``with`` block, ``names("q")`` a unique entity name. The sync twin runs under Kombu (the
reference) and kelp, the async source under ``kelp.aio``; the three results must be equal. A result is made
comparable by :func:`plain`: entity names go back to their logical prefix, messages become :func:`observe`
dicts, and exceptions their class name.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import amqp.exceptions
import kombu
import kombu.common
import kombu.compression
import kombu.exceptions
import kombu.message
import kombu.messaging
import kombu.mixins
import kombu.pools
import kombu.serialization
import kombu.simple

Scenario = Callable[..., Any]

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
    # Where a Kombu program finds the broker's refusals (PreconditionFailed, NotFound...): py-amqp's classes.
    broker_errors=amqp.exceptions,
    messaging=kombu.messaging,
    message=kombu.message,
    mixins=kombu.mixins,
    pools=kombu.pools,
    simple=kombu.simple,
    serialization=kombu.serialization,
    compression=kombu.compression,
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
        self.exc = exc
        self.name = type(exc).__name__

    def isinstance(self, cls: type[BaseException]) -> bool:
        """Whether what was raised is a ``cls`` (for kelp classes that refine Kombu's)."""
        return isinstance(self.exc, cls)

    def __repr__(self) -> str:
        return f"<raised {self.name}>"


def _payload(message: Any) -> Any:
    try:
        return message.payload
    except Exception as exc:
        return Failed(exc)


def observe(message: Any) -> dict[str, Any] | None:
    """What an application sees of a received message."""
    if message is None:
        return None
    properties = message.properties or {}
    return {
        "body": _payload(message),
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


_REFERENCE: dict[tuple[str, str, str, str], Any] = {}


def reference(url: str, scenario: Scenario, args: tuple[Any, ...]) -> Any:
    """What ``scenario(*args)`` observes under Kombu on RabbitMQ, as plain data.

    ``scenario`` may be either face's function: the reference always runs its sync twin (the same name in
    the ``sync`` package). Kombu's result does not depend on the transport or the face under test, so it is
    computed once per scenario and arguments and shared by every test that compares against it.
    """
    module = importlib.import_module(scenario.__module__.replace(".aio.", ".sync."))
    twin = getattr(module, scenario.__name__)
    key = (url, module.__name__, twin.__name__, repr(args))
    if key not in _REFERENCE:
        helpers = importlib.import_module(f"{module.__package__}.helpers")
        _REFERENCE[key] = helpers.run(KOMBU, url, twin, *args)
    return _REFERENCE[key]


class Records(logging.Handler):
    """A logger's records, as ``(level name, logger name)``: what a program's log shows, not its wording."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.levelname, "exc_info" if record.exc_info else "no exc_info"))


def private_logger() -> tuple[logging.Logger, Records]:
    """A logger of its own whose records are kept (and not propagated to the test run's handlers)."""
    logger = logging.getLogger(f"kelp.differential.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    records = Records()
    logger.addHandler(records)
    return logger, records
