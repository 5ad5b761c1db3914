"""Validation of declarations and the dead-letter rules, shared by every transport kelp brokers."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kelp.exceptions import AccessRefused, PreconditionFailed, UsageError
from kelp.routing import BindingTable, Destination

__all__ = [
    "INVALID_X_DEATH",
    "OVERFLOW_MODES",
    "DeclaredQueue",
    "ExchangeDef",
    "QueueArgs",
    "QueueDef",
    "binding_destination",
    "check_exchange_redeclare",
    "check_name",
    "check_queue_redeclare",
    "dead_letter",
    "expiration_ms",
    "generated_queue_name",
    "same_arguments",
    "valid_x_death",
]

OVERFLOW_MODES = frozenset({"drop-head", "reject-publish", "reject-publish-dlx"})
MAX_PRIORITY = 255
# Dead-letter reasons after which a message that comes back to the same queue is dropped (a cycle);
# RabbitMQ lets a rejected message cycle, since a consumer decided each step.
_CYCLE_REASONS = frozenset({"expired", "maxlen", "delivery_limit"})


def _int_arg(arguments: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PreconditionFailed(
            f"invalid arg '{key}' for queue: {value!r} (expected an integer >= {minimum})"
        )
    return value


@dataclass(frozen=True, slots=True)
class QueueArgs:
    """The ``x-*`` queue arguments kelp's own brokers act on, validated (times in milliseconds)."""

    message_ttl: int | None = None
    expires: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    max_priority: int | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None

    @classmethod
    def parse(cls, arguments: Mapping[str, Any] | None) -> QueueArgs:
        """Validate ``arguments``; raise PreconditionFailed (as RabbitMQ does) for a bad value."""
        args = arguments or {}
        overflow = args.get("x-overflow", "drop-head")
        if overflow not in OVERFLOW_MODES:
            raise PreconditionFailed(
                f"invalid arg 'x-overflow' for queue: {overflow!r} (expected one of {sorted(OVERFLOW_MODES)})"
            )
        max_priority = _int_arg(args, "x-max-priority", 0)
        if max_priority is not None and max_priority > MAX_PRIORITY:
            raise PreconditionFailed(f"invalid arg 'x-max-priority' for queue: {max_priority} (max 255)")
        dlx = args.get("x-dead-letter-exchange")
        dlrk = args.get("x-dead-letter-routing-key")
        for key, value in (("x-dead-letter-exchange", dlx), ("x-dead-letter-routing-key", dlrk)):
            if value is not None and not isinstance(value, str):
                raise PreconditionFailed(f"invalid arg '{key}' for queue: {value!r} (expected a string)")
        if dlrk is not None and dlx is None:
            raise PreconditionFailed(
                "invalid arg 'x-dead-letter-routing-key': it needs x-dead-letter-exchange"
            )
        return cls(
            message_ttl=_int_arg(args, "x-message-ttl", 0),
            expires=_int_arg(args, "x-expires", 1),
            max_length=_int_arg(args, "x-max-length", 0),
            max_length_bytes=_int_arg(args, "x-max-length-bytes", 0),
            overflow=overflow,
            max_priority=max_priority or None,
            dead_letter_exchange=dlx,
            dead_letter_routing_key=dlrk,
        )

    @property
    def bounded(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


class ExchangeDef:
    """An exchange as kelp's own brokers hold it: its declaration and its bindings."""

    __slots__ = ("arguments", "auto_delete", "durable", "internal", "name", "table", "type")

    def __init__(
        self,
        name: str,
        type_: str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.name = name
        self.type = type_
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments
        self.table = BindingTable(type_)


class QueueDef:
    """A queue's declaration as a store that keeps its topology in tables reads it back."""

    __slots__ = ("args", "arguments", "auto_delete", "durable", "exclusive_owner", "name")

    def __init__(
        self,
        name: str,
        durable: bool,
        exclusive_owner: int | None,
        auto_delete: bool,
        arguments: dict[str, Any],
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments
        self.args = QueueArgs.parse(arguments)


class DeclaredQueue(Protocol):
    """What a redeclaration is checked against (a :class:`QueueDef`, or the memory store's queue)."""

    @property
    def durable(self) -> bool: ...
    @property
    def exclusive_owner(self) -> int | None: ...
    @property
    def auto_delete(self) -> bool: ...
    @property
    def arguments(self) -> dict[str, Any]: ...


def binding_destination(kind: str, name: str) -> Destination:
    """The destination of a binding: kind ``'queue'`` or ``'exchange'``."""
    if kind == "queue":
        return Destination.queue(name)
    if kind == "exchange":
        return Destination.exchange(name)
    raise UsageError(f"a binding destination is a 'queue' or an 'exchange', not {kind!r}")


def check_name(kind: str, name: str, passive: bool) -> None:
    """Refuse names RabbitMQ reserves (``amq.*``) unless the declaration is passive, names longer than
    255 bytes, and names that are not text (a lone surrogate has no UTF-8)."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise PreconditionFailed(f"{kind} name {name!r} is not UTF-8 text: no broker can store it") from None
    if size > 255:
        raise PreconditionFailed(f"{kind} name is longer than 255 bytes: {name[:40]!r}...")
    if name.startswith("amq.") and not passive:
        raise AccessRefused(f"{kind} name '{name}' contains reserved prefix 'amq.*'")


def check_exchange_redeclare(
    declared: ExchangeDef,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Mapping[str, Any] | None,
) -> None:
    """Raise PreconditionFailed unless a redeclaration matches the declared exchange: type, durable,
    auto_delete, internal and arguments each."""
    same = (declared.type, declared.durable, declared.auto_delete, declared.internal) == (
        type_,
        durable,
        auto_delete,
        internal,
    )
    if not same or not same_arguments(declared.arguments, arguments):
        raise PreconditionFailed(
            f"inequivalent arg for exchange '{declared.name}': declared as {declared.type} "
            f"durable={declared.durable} auto_delete={declared.auto_delete}, redeclared as {type_} "
            f"durable={durable} auto_delete={auto_delete}"
        )


def check_queue_redeclare(
    name: str,
    declared: DeclaredQueue,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any] | None,
) -> None:
    """Raise PreconditionFailed unless a redeclaration matches the declared queue: durable, exclusive,
    auto_delete and arguments each."""
    was_exclusive = declared.exclusive_owner is not None
    same = (declared.durable, was_exclusive, declared.auto_delete) == (durable, exclusive, auto_delete)
    if not same or not same_arguments(declared.arguments, arguments):
        raise PreconditionFailed(
            f"inequivalent arg for queue '{name}': declared with durable={declared.durable} "
            f"exclusive={was_exclusive} auto_delete={declared.auto_delete} "
            f"arguments={dict(declared.arguments or {})}, redeclared with durable={durable} "
            f"exclusive={exclusive} auto_delete={auto_delete} arguments={dict(arguments or {})}"
        )


def generated_queue_name() -> str:
    """A broker-generated queue name, in RabbitMQ's style."""
    return "amq.gen-" + secrets.token_urlsafe(16)


def same_arguments(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    return dict(a or {}) == dict(b or {})


def expiration_ms(properties: Mapping[str, Any]) -> int | None:
    """The per-message TTL from the ``expiration`` property (a string of milliseconds), validated."""
    value = properties.get("expiration")
    if value is None:
        return None
    try:
        ms = int(value)
    except (TypeError, ValueError):
        raise PreconditionFailed(f"invalid expiration {value!r}: expected a string of milliseconds") from None
    if ms < 0:
        raise PreconditionFailed(f"invalid expiration {value!r}: must be >= 0")
    return ms


#: The header that keeps a malformed ``x-death`` a dead-lettered message arrived with (see dead_letter).
INVALID_X_DEATH = "x-death-invalid"


def valid_x_death(value: Any) -> bool:
    """True when ``value`` is an ``x-death`` kelp can extend: a list of tables whose ``count``, when
    present, is a non-negative integer (RabbitMQ writes nothing else there)."""
    if not isinstance(value, list | tuple):
        return False
    for entry in value:
        if not isinstance(entry, Mapping):
            return False
        count = entry.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return False
    return True


def dead_letter(
    headers: Mapping[str, Any],
    properties: Mapping[str, Any],
    *,
    queue: str,
    reason: str,
    exchange: str,
    routing_key: str,
    now: float,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The headers and properties of a message dead-lettered from ``queue``, or None for a cycle.

    Follows RabbitMQ: an ``x-death`` list (most recent first) with one entry per (queue, reason) whose
    ``count`` grows on repeats; ``x-first-death-*`` set once; the ``expiration`` property removed (kept as
    ``original-expiration``) so the copy does not expire again for the same reason.

    Any message can be dead-lettered, whatever its headers: an ``x-death`` that is not a list of tables
    with integer counts (a foreign or careless producer's) is treated as absent, and the original value
    is kept, unchanged, under :data:`INVALID_X_DEATH` (``x-death-invalid``) on the copy.
    """
    new_headers = dict(headers)
    raw_deaths = new_headers.get("x-death", ())
    if not valid_x_death(raw_deaths):
        new_headers[INVALID_X_DEATH] = new_headers.pop("x-death")
        raw_deaths = ()
    deaths = [dict(entry) for entry in raw_deaths]
    new_properties = dict(properties)
    original_expiration = new_properties.pop("expiration", None)
    for index, entry in enumerate(deaths):
        if entry.get("queue") == queue and entry.get("reason") == reason:
            if reason in _CYCLE_REASONS:
                return None
            entry["count"] = entry.get("count", 1) + 1
            entry["time"] = _timestamp(now)
            deaths.insert(0, deaths.pop(index))
            break
    else:
        entry = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": _timestamp(now),
            "exchange": exchange,
            "routing-keys": [routing_key],
        }
        if original_expiration is not None:
            entry["original-expiration"] = original_expiration
        deaths.insert(0, entry)
    new_headers["x-death"] = deaths
    new_headers.setdefault("x-first-death-exchange", exchange)
    new_headers.setdefault("x-first-death-queue", queue)
    new_headers.setdefault("x-first-death-reason", reason)
    return new_headers, new_properties


def tag(prefix: str) -> str:
    """A unique tag for consumers or names the broker generates."""
    return prefix + secrets.token_hex(8)


def _timestamp(now: float) -> datetime:
    # RabbitMQ writes x-death times as AMQP timestamps: whole seconds, read back as UTC datetimes.
    return datetime.fromtimestamp(int(now), tz=UTC)
