"""``Exchange``, where messages are published and routed by type (direct, fanout, topic, headers, or a broker
plugin's), and ``binding``, one edge of the routing graph from an exchange to a queue or exchange."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from kelp._bindable import (
    PERSISTENT_DELIVERY_MODE,
    TRANSIENT_DELIVERY_MODE,
    _as_dict,
    _Bindable,
    _frozen,
    _ignore_unknown,
    _name,
    maybe_delivery_mode,
)
from kelp.exceptions import UsageError
from kelp.routing import EXCHANGE_TYPES, is_plugin_type

if TYPE_CHECKING:
    from kelp._queue import Queue

__all__ = ["Exchange", "binding"]


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
        self.delivery_mode = maybe_delivery_mode(delivery_mode, default=None)
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
        mode = maybe_delivery_mode(delivery_mode, default=maybe_delivery_mode(self.delivery_mode))
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
