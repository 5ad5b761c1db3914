"""What exchanges, bindings and queues share: binding a declaration to a channel (or a connection's default
channel) so its operations forward there, the delivery modes a message may be published with, and the
helpers behind their equality and ``as_dict``."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from kelp.exceptions import NotBoundError, UsageError

if TYPE_CHECKING:
    from kelp._exchange import Exchange

logger = logging.getLogger("kelp.entity")

TRANSIENT_DELIVERY_MODE = 1
PERSISTENT_DELIVERY_MODE = 2
DELIVERY_MODES = {"transient": TRANSIENT_DELIVERY_MODE, "persistent": PERSISTENT_DELIVERY_MODE}


def maybe_delivery_mode(
    v: int | str | None,
    modes: Mapping[str, int] | None = None,
    default: int | None = PERSISTENT_DELIVERY_MODE,
) -> int | None:
    """Map ``'persistent'``/``'transient'``/1/2/None to the AMQP delivery-mode number (``None`` gives
    ``default``); ``modes`` replaces the table of names."""
    value = v
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return (DELIVERY_MODES if modes is None else modes)[value]
        except KeyError:
            raise UsageError(
                f"delivery_mode must be 'persistent', 'transient', 1 or 2, not {value!r}"
            ) from None
    if value not in (TRANSIENT_DELIVERY_MODE, PERSISTENT_DELIVERY_MODE):
        raise UsageError(f"delivery_mode must be 'persistent', 'transient', 1 or 2, not {value!r}")
    return value


def _seconds_to_ms(value: float | None, name: str) -> int | None:
    if value is None:
        return None
    if value < 0:
        raise UsageError(f"{name} must be >= 0 seconds, not {value!r}")
    return round(value * 1000)


class _Bindable:
    """Shared binding to a channel. Subclasses forward their operations to ``self.channel``."""

    _channel: Any = None

    @property
    def channel(self) -> Any:
        if self._channel is None:
            raise NotBoundError(f"{self!r} is not bound to a channel; use entity.bind(channel) first")
        return self._channel

    @property
    def is_bound(self) -> bool:
        return self._channel is not None

    def bind(self, channel: Any) -> Self:
        """A copy of this entity bound to ``channel`` (a channel, or a connection's default channel)."""
        bound = copy.copy(self)
        bound._channel = _as_channel(channel)
        bound.when_bound()
        return bound

    def __call__(self, channel: Any) -> Self:
        return self.bind(channel)

    def maybe_bind(self, channel: Any) -> Self:
        """Bind in place if not bound yet; return self (Kombu's semantics)."""
        if self._channel is None:
            self._channel = _as_channel(channel)
            self.when_bound()
        return self

    def revive(self, channel: Any) -> None:
        """Rebind in place to a new channel (after a reconnect)."""
        self._channel = _as_channel(channel)
        self.when_bound()

    def when_bound(self) -> None:
        """Called each time the entity is bound to a channel; a subclass overrides it (Kombu's hook)."""

    def _chan(self, channel: Any | None) -> Any:
        return _as_channel(channel) if channel is not None else self.channel


def _as_channel(channel_or_connection: Any) -> Any:
    """Entities accept a channel or a connection (meaning its default channel)."""
    if hasattr(channel_or_connection, "basic_publish"):
        return channel_or_connection
    return channel_or_connection.default_channel


def _as_dict(entity: Any, attributes: Iterable[str], recurse: bool) -> dict[str, Any]:
    from kelp._exchange import Exchange, binding  # here: both import this module
    from kelp._queue import Queue

    def value(item: Any) -> Any:
        if recurse and isinstance(item, Exchange | binding | Queue):
            return item.as_dict(recurse=True)
        if isinstance(item, set):
            return [value(each) for each in sorted(item, key=repr)]
        return item

    return {attribute: value(getattr(entity, attribute)) for attribute in attributes}


def _ignore_unknown(kind: str, unknown: Mapping[str, Any]) -> None:
    """Kombu ignores keyword arguments its entities do not know; kelp does too, but says so."""
    if unknown:
        logger.warning("%s ignores unknown arguments %s", kind, sorted(unknown))


def _name(entity: Exchange | str) -> str:
    return entity if isinstance(entity, str) else entity.name


def _frozen(value: Any) -> Any:
    """A hashable, order-independent form of nested dicts/lists (for equality of declarations)."""
    if isinstance(value, Mapping):
        return frozenset((key, _frozen(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    return value
