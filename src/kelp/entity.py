"""Exchanges, queues and bindings: the routing graph, as plain values.

These classes hold declarations only; they do no I/O themselves. Binding one to a channel
(``queue(channel)`` or ``queue.bind(channel)``) gives a copy whose operations (``declare``, ``purge``,
``get``...) forward to that channel. The same classes serve both faces: on a ``kelp`` channel the operations
return results, on a ``kelp.aio`` channel they return awaitables (``await queue(channel).declare()``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from kelp.exceptions import ContentDisallowed, NotBoundError, UsageError
from kelp.routing import EXCHANGE_TYPES, is_plugin_type

logger = logging.getLogger(__name__)

__all__ = [
    "PERSISTENT_DELIVERY_MODE",
    "TRANSIENT_DELIVERY_MODE",
    "Exchange",
    "Queue",
    "binding",
    "maybe_delivery_mode",
]

TRANSIENT_DELIVERY_MODE = 1
PERSISTENT_DELIVERY_MODE = 2
DELIVERY_MODES = {"transient": TRANSIENT_DELIVERY_MODE, "persistent": PERSISTENT_DELIVERY_MODE}


def maybe_delivery_mode(
    value: int | str | None, default: int | None = PERSISTENT_DELIVERY_MODE
) -> int | None:
    """Map ``'persistent'``/``'transient'``/1/2/None to the AMQP delivery-mode number."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return DELIVERY_MODES[value]
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


class Exchange(_Bindable):
    """An exchange: routes each published message to the queues (and exchanges) bound to it.

    ``type`` is ``direct`` (binding key equals routing key), ``fanout`` (every binding), ``topic``
    (dotted patterns; ``*`` one word, ``#`` zero or more) or ``headers`` (``x-match`` all/any on headers).
    The unnamed exchange ``''`` is the broker's default exchange: it routes to the queue named by the
    routing key and cannot be declared or deleted. ``delivery_mode`` is the default for messages published
    through this exchange (``'persistent'``, ``'transient'``, 2 or 1).
    """

    TRANSIENT_DELIVERY_MODE: ClassVar[int] = TRANSIENT_DELIVERY_MODE
    PERSISTENT_DELIVERY_MODE: ClassVar[int] = PERSISTENT_DELIVERY_MODE

    def __init__(
        self,
        name: str = "",
        type: str = "",
        channel: Any = None,
        *,
        durable: bool = True,
        auto_delete: bool = False,
        passive: bool = False,
        delivery_mode: int | str | None = None,
        arguments: Mapping[str, Any] | None = None,
        no_declare: bool = False,
        internal: bool = False,
        **unknown: Any,
    ) -> None:
        name = "" if name is None else name
        if not isinstance(name, str):
            raise UsageError(f"exchange name must be a str, not {name.__class__.__name__}")
        _ignore_unknown("Exchange", unknown)
        self.name = name
        self.type = type or "direct"
        if self.type not in EXCHANGE_TYPES and not is_plugin_type(self.type):
            raise UsageError(
                f"unknown exchange type {self.type!r}; expected one of {sorted(EXCHANGE_TYPES)} or a broker "
                "plugin's x-... type (amqp:// only)"
            )
        self.durable = durable
        self.auto_delete = auto_delete
        self.passive = passive
        self.delivery_mode = maybe_delivery_mode(delivery_mode, None)
        self.arguments = dict(arguments or {})
        self.no_declare = no_declare
        self.internal = internal
        if channel is not None:
            self.maybe_bind(channel)

    # --- identity ---------------------------------------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.type, self.durable, self.auto_delete, self.internal, _frozen(self.arguments))

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Exchange) and self._key() == other._key())

    def __hash__(self) -> int:
        # By name only: cheap on the publish path (maybe_declare looks entities up in a set), and
        # consistent with __eq__, which compares every property.
        return hash(("exchange", self.name))

    def __repr__(self) -> str:
        return f"<Exchange {self.name or '(default)'}({self.type})>"

    @property
    def can_cache_declaration(self) -> bool:
        """Whether a declaration can be remembered per connection (durable, not auto-deleted)."""
        return self.durable and not self.auto_delete

    @property
    def is_default(self) -> bool:
        return self.name == ""

    # --- operations (forwarded to the bound channel) ----------------------------------------------------

    def declare(self, nowait: bool = False, passive: bool | None = None, channel: Any = None) -> Any:
        """Declare the exchange (no-op for the default exchange). Raises NotFound when passive and missing,
        PreconditionFailed when it exists with other properties."""
        return self._chan(channel).declare_exchange(
            self, passive=self.passive if passive is None else passive
        )

    def delete(self, if_unused: bool = False, nowait: bool = False) -> Any:
        return self.channel.exchange_delete(exchange=self.name, if_unused=if_unused, nowait=nowait)

    def bind_to(
        self,
        exchange: Exchange | str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> Any:
        """Bind this exchange as the destination of ``exchange`` (exchange-to-exchange binding)."""
        return self._chan(channel).exchange_bind(
            destination=self.name, source=_name(exchange), routing_key=routing_key, arguments=arguments
        )

    def unbind_from(
        self,
        source: Exchange | str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> Any:
        return self._chan(channel).exchange_unbind(
            destination=self.name, source=_name(source), routing_key=routing_key, arguments=arguments
        )

    def publish(
        self,
        message: Any,
        routing_key: str | None = None,
        mandatory: bool = False,
        immediate: bool = False,
        exchange: str | None = None,
    ) -> Any:
        """Publish a message made by :meth:`Message` (low level; most code uses ``Producer.publish``)."""
        return self.channel.basic_publish(
            message,
            exchange=self.name if exchange is None else exchange,
            routing_key=routing_key or "",
            mandatory=mandatory,
        )

    def Message(
        self,
        body: bytes | str,
        delivery_mode: int | str | None = None,
        properties: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        # Persistent unless the call or the exchange says otherwise, as in Kombu.
        mode = maybe_delivery_mode(delivery_mode, maybe_delivery_mode(self.delivery_mode))
        props = dict(properties or {})
        props["delivery_mode"] = mode
        return self.channel.prepare_message(body, properties=props, **kwargs)

    def binding(
        self,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        unbind_arguments: Mapping[str, Any] | None = None,
    ) -> binding:
        return binding(self, routing_key, arguments, unbind_arguments)

    #: The attributes :meth:`as_dict` lists (Kombu's set).
    ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "name",
        "type",
        "arguments",
        "durable",
        "passive",
        "auto_delete",
        "delivery_mode",
        "no_declare",
    )

    def as_dict(self, recurse: bool = False) -> dict[str, Any]:
        """The declaration's attributes as a dict (Kombu's keys)."""
        return _as_dict(self, self.ATTRIBUTES, recurse)


class binding:
    """One edge of the routing graph: "messages on ``exchange`` matching ``routing_key``/``arguments``"."""

    def __init__(
        self,
        exchange: Exchange | str | None = None,
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        unbind_arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.exchange = Exchange(exchange) if isinstance(exchange, str) else exchange
        self.routing_key = routing_key
        self.arguments = dict(arguments or {})
        self.unbind_arguments = dict(unbind_arguments) if unbind_arguments is not None else None

    def as_dict(self, recurse: bool = False) -> dict[str, Any]:
        return _as_dict(self, ("exchange", "routing_key", "arguments", "unbind_arguments"), recurse)

    def declare(self, channel: Any, nowait: bool = False) -> Any:
        """Declare the exchange of this binding (the binding itself is made by :meth:`bind`)."""
        if self.exchange is not None and self.exchange.name:
            return self.exchange.declare(channel=channel)
        return None

    def bind(self, entity: Queue | Exchange, nowait: bool = False, channel: Any = None) -> Any:
        return entity.bind_to(
            exchange=self.exchange or "",
            routing_key=self.routing_key,
            arguments=self.arguments,
            channel=channel,
        )

    def unbind(self, entity: Queue | Exchange, nowait: bool = False, channel: Any = None) -> Any:
        args = self.unbind_arguments if self.unbind_arguments is not None else self.arguments
        return entity.unbind_from(
            self.exchange or "", routing_key=self.routing_key, arguments=args, channel=channel
        )

    def _key(self) -> tuple[Any, ...]:
        return (_name(self.exchange or ""), self.routing_key, _frozen(self.arguments))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, binding) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"<binding: {_name(self.exchange or '')!r} -> {self.routing_key!r}>"


class Queue(_Bindable):
    """A queue: stores messages until a consumer acknowledges them.

    ``exchange``/``routing_key`` give the queue's primary binding, ``bindings`` any number more (a queue
    with ``bindings`` and no ``exchange`` is bound only through them). An empty ``name`` asks the broker to
    generate one (with ``exclusive=True`` this is the usual reply queue). ``exclusive`` queues belong to the
    connection that declared them and are deleted when it closes; ``auto_delete`` queues are deleted when
    their last consumer cancels.

    Shortcuts become RabbitMQ's ``x-*`` queue arguments: ``message_ttl`` and ``expires`` (seconds),
    ``max_length``, ``max_length_bytes``, ``max_priority``, ``dead_letter_exchange``,
    ``dead_letter_routing_key``; ``queue_arguments`` may set any other (``x-overflow``...).
    """

    #: What ``get(accept=...)`` raises, through the message, for a refused content type (Kombu's alias).
    ContentDisallowed = ContentDisallowed

    def __init__(
        self,
        name: str = "",
        exchange: Exchange | str | list[binding] | tuple[binding, ...] | set[binding] | None = None,
        routing_key: str = "",
        channel: Any = None,
        bindings: Iterable[binding] | None = None,
        on_declared: Any = None,
        *,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
        no_ack: bool | None = None,
        alias: str | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
        binding_arguments: Mapping[str, Any] | None = None,
        consumer_arguments: Mapping[str, Any] | None = None,
        no_declare: bool = False,
        passive: bool = False,
        expires: float | None = None,
        message_ttl: float | None = None,
        max_length: int | None = None,
        max_length_bytes: int | None = None,
        max_priority: int | None = None,
        dead_letter_exchange: Exchange | str | None = None,
        dead_letter_routing_key: str | None = None,
        **unknown: Any,
    ) -> None:
        name = "" if name is None else name
        if not isinstance(name, str):
            raise UsageError(f"queue name must be a str, not {type(name).__name__}")
        _ignore_unknown("Queue", unknown)
        self.name = name
        self.bindings = set(bindings or ())
        if isinstance(exchange, list | tuple | set):  # Queue("name", [binding(...), ...])
            self.bindings |= set(exchange)
            exchange = None
        # As in Kombu: a queue with bindings is bound by those only, never also by ``exchange``.
        self.exchange = (
            None if self.bindings else Exchange(exchange) if isinstance(exchange, str) else exchange
        )
        self.routing_key = routing_key
        self.on_declared = on_declared
        self.durable = durable
        self.exclusive = exclusive
        # An exclusive queue always goes away with its connection, as in Kombu.
        self.auto_delete = auto_delete or exclusive
        self.no_ack = bool(no_ack)
        self.alias = alias
        self.queue_arguments = dict(queue_arguments or {})
        self.binding_arguments = dict(binding_arguments or {})
        self.consumer_arguments = dict(consumer_arguments or {})
        self.no_declare = no_declare
        self.passive = passive
        self.expires = expires
        self.message_ttl = message_ttl
        self.max_length = max_length
        self.max_length_bytes = max_length_bytes
        self.max_priority = max_priority
        self.dead_letter_exchange = dead_letter_exchange
        self.dead_letter_routing_key = dead_letter_routing_key
        if self.exchange is None and not self.bindings:
            self.exchange = Exchange("")
        if channel is not None:
            self.maybe_bind(channel)

    # --- declarations -----------------------------------------------------------------------------------

    @property
    def arguments(self) -> dict[str, Any]:
        """The queue arguments sent to the broker: ``queue_arguments`` plus the shortcuts."""
        args = dict(self.queue_arguments)
        shortcuts: dict[str, Any] = {
            "x-message-ttl": _seconds_to_ms(self.message_ttl, "message_ttl"),
            "x-expires": _seconds_to_ms(self.expires, "expires"),
            "x-max-length": self.max_length,
            "x-max-length-bytes": self.max_length_bytes,
            "x-max-priority": self.max_priority,
            "x-dead-letter-exchange": (
                None if self.dead_letter_exchange is None else _name(self.dead_letter_exchange)
            ),
            "x-dead-letter-routing-key": self.dead_letter_routing_key,
        }
        args.update({key: value for key, value in shortcuts.items() if value is not None})
        return args

    @property
    def all_bindings(self) -> list[binding]:
        """Every binding to make on declare: the primary one (unless on the default exchange), then
        ``bindings``."""
        edges = []
        if self.exchange is not None and self.exchange.name:
            edges.append(binding(self.exchange, self.routing_key, self.binding_arguments))
        edges.extend(sorted(self.bindings, key=repr))
        return edges

    @property
    def can_cache_declaration(self) -> bool:
        return self.durable and not self.auto_delete and bool(self.name)

    def _key(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.exchange,
            self.routing_key,
            frozenset(self.bindings),
            self.durable,
            self.exclusive,
            self.auto_delete,
            _frozen(self.arguments),
            _frozen(self.binding_arguments),
        )

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Queue) and self._key() == other._key())

    def __hash__(self) -> int:
        return hash(("queue", self.name))

    def __repr__(self) -> str:
        if self.bindings:
            return f"<Queue {self.name}: bindings {sorted(self.bindings, key=repr)}>"
        return f"<Queue {self.name} -> {self.exchange!r} -> {self.routing_key}>"

    # --- operations (forwarded to the bound channel) ----------------------------------------------------

    def declare(self, nowait: bool = False, channel: Any = None) -> Any:
        """Declare the exchanges, the queue and its bindings; return the queue name (generated if empty)."""
        return self._chan(channel).declare_queue(self, passive=self.passive)

    def queue_declare(self, nowait: bool = False, passive: bool = False, channel: Any = None) -> Any:
        """Declare only the queue; return ``(queue, message_count, consumer_count)``."""
        return self._chan(channel).queue_declare_entity(self, passive=passive)

    def queue_bind(self, nowait: bool = False, channel: Any = None) -> Any:
        return self._chan(channel).bind_queue_entity(self)

    def bind_to(
        self,
        exchange: Exchange | str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> Any:
        return self._chan(channel).queue_bind(
            queue=self.name, exchange=_name(exchange), routing_key=routing_key, arguments=arguments
        )

    def unbind_from(
        self,
        exchange: Exchange | str = "",
        routing_key: str = "",
        arguments: Mapping[str, Any] | None = None,
        nowait: bool = False,
        channel: Any = None,
    ) -> Any:
        return self._chan(channel).queue_unbind(
            queue=self.name, exchange=_name(exchange), routing_key=routing_key, arguments=arguments
        )

    def queue_unbind(
        self, arguments: Mapping[str, Any] | None = None, nowait: bool = False, channel: Any = None
    ) -> Any:
        return self.unbind_from(self.exchange or "", self.routing_key, arguments, nowait, channel)

    def get(self, no_ack: bool | None = None, accept: Iterable[str] | None = None) -> Any:
        """Fetch one message, or None when the queue is empty (polling; consumers are better)."""
        return self.channel.get_message(
            self.name, no_ack=bool(self.no_ack if no_ack is None else no_ack), accept=accept
        )

    def purge(self, nowait: bool = False) -> Any:
        """Remove every ready message; return how many. Unacked deliveries are not touched."""
        return self.channel.queue_purge(queue=self.name)

    def delete(self, if_unused: bool = False, if_empty: bool = False, nowait: bool = False) -> Any:
        return self.channel.queue_delete(queue=self.name, if_unused=if_unused, if_empty=if_empty)

    def consume(
        self,
        consumer_tag: str = "",
        callback: Any = None,
        no_ack: bool | None = None,
        nowait: bool = False,
        on_cancel: Any = None,
    ) -> Any:
        return self.channel.basic_consume(
            queue=self.name,
            consumer_tag=consumer_tag,
            callback=callback,
            no_ack=bool(self.no_ack if no_ack is None else no_ack),
            arguments=self.consumer_arguments,
        )

    def cancel(self, consumer_tag: str) -> Any:
        return self.channel.basic_cancel(consumer_tag)

    #: The attributes :meth:`as_dict` lists (Kombu's set).
    ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "name",
        "exchange",
        "routing_key",
        "queue_arguments",
        "binding_arguments",
        "consumer_arguments",
        "durable",
        "exclusive",
        "auto_delete",
        "no_ack",
        "alias",
        "bindings",
        "no_declare",
        "expires",
        "message_ttl",
        "max_length",
        "max_length_bytes",
        "max_priority",
    )

    def as_dict(self, recurse: bool = False) -> dict[str, Any]:
        """The declaration's attributes as a dict (Kombu's keys); with ``recurse`` the exchange and the
        bindings are dicts too."""
        return _as_dict(self, self.ATTRIBUTES, recurse)

    @classmethod
    def from_dict(cls, name: str, **options: Any) -> Queue:
        """A queue from a flat options dict (Kombu's form: ``exchange``, ``exchange_type``, ...)."""
        exchange = options.pop("exchange", None)
        exchange_type = options.pop("exchange_type", None)
        exchange_durable = options.pop("exchange_durable", True)
        if isinstance(exchange, str) or exchange_type:
            exchange = Exchange(exchange or "", exchange_type or "direct", durable=exchange_durable)
        options.pop("binding_key", None)
        return cls(name, exchange, **options)


def _as_dict(entity: Any, attributes: Iterable[str], recurse: bool) -> dict[str, Any]:
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
