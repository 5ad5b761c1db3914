"""``Queue``: a queue's declaration (durability, TTLs, length limits, dead-lettering, priorities) and its
bindings; bound to a channel, its operations declare, bind, purge, get from and delete the queue."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from kelp._bindable import (
    _as_dict,
    _Bindable,
    _frozen,
    _ignore_unknown,
    _name,
    _seconds_to_ms,
)
from kelp._exchange import Exchange, binding
from kelp.exceptions import ContentDisallowed, UsageError

__all__ = ["Queue"]


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
