"""Where tracing and metrics attach to the library: one module attribute, ``None`` unless enabled.

The publish path (``Producer``), the dispatch path (``Consumer`` callbacks and ``async for``) and message
settlement read :data:`observer` once; while it is ``None`` that attribute load is all instrumentation
costs. :func:`install` sets it (``kelp.otel`` and ``kelp.prometheus`` do, when enabled); with several
observers installed, one fan-out object calls each in turn. Observers see messages but never change what
happens to them, except that a publish observer may add headers (trace context) to outgoing envelopes.

Both faces share this module: observers are plain synchronous objects, called before and after the
awaited operation, and each ``*_start`` returns the function to call when it ends (with the exception
that ended it, or ``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kelp._envelope import Envelope

__all__ = ["Done", "Observer", "install", "messaging_system", "observer", "queue_of", "uninstall"]

#: Called once when an observed operation ends, with the exception that ended it (or None).
Done = Callable[[BaseException | None], None]


class Observer(Protocol):
    """What an instrumentation implements. ``connection`` is a ``kelp.Connection`` or ``kelp.aio.Connection``.

    ``publish_start`` runs before the envelopes go to the transport and may add headers to them;
    ``process_start`` runs before a consumer's callbacks (or the body of an ``async for``) handle a
    message taken from ``queue``; ``settle_start`` runs before an ack (``outcome`` ``"ack"``), a reject
    (``"reject"``) or a requeue (``"requeue"``) goes to the broker.
    """

    def publish_start(self, connection: Any, envelopes: Sequence[Envelope]) -> Done: ...

    def process_start(self, connection: Any, queue: str, message: Any) -> Done: ...

    def settle_start(self, message: Any, outcome: str) -> Done: ...


#: The installed observer (one, or a fan-out over several); None when nothing observes.
observer: Observer | None = None

_installed: list[Observer] = []


class _Fanout:
    """Calls every installed observer, in installation order."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def publish_start(self, connection: Any, envelopes: Sequence[Envelope]) -> Done:
        return _all([o.publish_start(connection, envelopes) for o in self._observers])

    def process_start(self, connection: Any, queue: str, message: Any) -> Done:
        return _all([o.process_start(connection, queue, message) for o in self._observers])

    def settle_start(self, message: Any, outcome: str) -> Done:
        return _all([o.settle_start(message, outcome) for o in self._observers])


def _all(callbacks: Sequence[Done]) -> Done:
    def done(exc: BaseException | None) -> None:
        # Ends in reverse order, so nested spans close innermost first.
        for callback in reversed(callbacks):
            callback(exc)

    return done


def install(new: Observer) -> None:
    """Start calling ``new`` on every publish, dispatch and settlement (in every connection)."""
    global observer
    if new not in _installed:
        _installed.append(new)
    observer = _installed[0] if len(_installed) == 1 else _Fanout(_installed)


def uninstall(old: Observer) -> None:
    """Stop calling ``old``; with no observer left, instrumentation costs nothing again."""
    global observer
    if old in _installed:
        _installed.remove(old)
    if not _installed:
        observer = None
    elif len(_installed) == 1:
        observer = _installed[0]
    else:
        observer = _Fanout(_installed)


#: URL scheme -> the ``messaging.system`` name OpenTelemetry's conventions use.
_SYSTEMS = {
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "pyamqp": "rabbitmq",
    "redis": "redis",
    "rediss": "redis",
    "sqlite": "sqlite",
    "memory": "memory",
    "postgres": "postgresql",
    "postgresql": "postgresql",
}


def messaging_system(connection: Any) -> str:
    """The messaging system a connection talks to, named as OpenTelemetry names it."""
    scheme = str(connection.transport_name)
    return _SYSTEMS.get(scheme, scheme)


def queue_of(consumer_queues: dict[str, str], message: Any) -> str:
    """The queue a consumer's message came from (its consumer tag names it), else the routing key."""
    tag = message.delivery_info.get("consumer_tag")
    for queue, queue_tag in consumer_queues.items():
        if queue_tag == tag:
            return queue
    return str(message.delivery_info.get("routing_key", ""))
