"""Routing: which queues a published message reaches. The one place where routing rules live.

Every transport that kelp brokers itself (memory, SQLite, Redis) routes with this module, so they all agree
with each other and with RabbitMQ:

* ``direct`` - the binding key equals the routing key.
* ``fanout`` - every binding matches; keys are ignored.
* ``topic`` - the binding key is a pattern of ``.``-separated words: ``*`` matches exactly one word, ``#``
  zero or more. See :func:`topic_match`.
* ``headers`` - the binding arguments are matched against the message headers. See :func:`headers_match`.

An exchange's bindings live in a :class:`BindingTable`; :func:`route` follows exchange-to-exchange bindings
and returns the names of the queues a message reaches. The default exchange ``""`` is not handled here: it
routes to the queue named by the routing key, which the broker resolves itself.

Pure code: no I/O, no clocks, no threads. A table is not locked; the broker that owns it serialises access.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias, cast

from kelp._patterns import (
    X_MATCH_MODES,
    DirectMatcher,
    FanoutMatcher,
    HeadersMatcher,
    InvalidXMatch,
    Matcher,
    TopicMatcher,
    headers_match,
    inner_for_write,
    topic_match,
)
from kelp.exceptions import PreconditionFailed, UsageError

__all__ = [
    "EXCHANGE_TYPES",
    "MATCHERS",
    "X_MATCH_MODES",
    "Arguments",
    "Binding",
    "BindingTable",
    "Destination",
    "InvalidBindingArguments",
    "InvalidXMatch",
    "Lookup",
    "Matcher",
    "PassThroughTypes",
    "UnknownExchangeType",
    "headers_match",
    "is_plugin_type",
    "route",
    "topic_match",
    "validate_exchange_type",
]


# --- bindings ------------------------------------------------------------------------------------------


class Destination(NamedTuple):
    """What a binding points at: a queue or (exchange-to-exchange binding) another exchange."""

    kind: Literal["queue", "exchange"]
    name: str

    @classmethod
    def queue(cls, name: str) -> Destination:
        return cls("queue", name)

    @classmethod
    def exchange(cls, name: str) -> Destination:
        return cls("exchange", name)


class InvalidBindingArguments(PreconditionFailed, TypeError):
    """Binding arguments that are not an AMQP table (a key that is not a str, a value that cannot be
    compared): refused with PRECONDITION_FAILED; also a TypeError, for code that validates arguments."""


def _freeze(value: Any) -> Any:
    if isinstance(value, Arguments):
        return value
    if isinstance(value, Mapping):
        return Arguments(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(item) for item in value)
    if not isinstance(value, Hashable):
        raise InvalidBindingArguments(
            f"binding argument value of type {type(value).__name__} cannot be frozen"
        )
    return value


class Arguments(Mapping[str, Any]):
    """An immutable, hashable copy of a binding's arguments table (nested tables and lists frozen too).

    Compares equal to any mapping with the same content, so ``binding.arguments == {"x-match": "any"}``.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        frozen: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if not isinstance(key, str):
                raise InvalidBindingArguments(f"binding argument names must be str, not {type(key).__name__}")
            frozen[key] = _freeze(value)
        self._data = frozen
        self._hash = hash(frozenset(frozen.items()))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arguments):
            return self._hash == other._hash and self._data == other._data
        if isinstance(other, Mapping):
            try:
                return self == Arguments(other)
            except TypeError:
                return False
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arguments({self._data!r})"


_NO_ARGUMENTS: Final = Arguments()


def _arguments(arguments: Mapping[str, Any] | None) -> Arguments:
    if not arguments:
        return _NO_ARGUMENTS
    return arguments if isinstance(arguments, Arguments) else Arguments(arguments)


@dataclass(frozen=True, slots=True)
class Binding:
    """One edge of the routing graph, from the exchange that owns the table to ``destination``.

    AMQP keeps bindings as a set keyed by all three fields: binding the same queue twice with the same key
    and arguments is one binding; with other arguments it is a second one.
    """

    destination: Destination
    routing_key: str = ""
    arguments: Arguments = _NO_ARGUMENTS

    def __post_init__(self) -> None:
        arguments = cast("Mapping[str, Any] | None", self.arguments)  # callers may pass a plain dict
        if not isinstance(arguments, Arguments):
            object.__setattr__(self, "arguments", _arguments(arguments))


#: The exchange types kelp routes itself, each with how its bindings match. A transport that routes at
#: publish time supports exactly these; one whose broker routes (``amqp://``) passes any other type
#: through to the broker (RabbitMQ plugins: ``x-delayed-message``, ``x-consistent-hash``...).
MATCHERS: Final[Mapping[str, Callable[[], Matcher]]] = {
    "direct": DirectMatcher,
    "fanout": FanoutMatcher,
    "topic": TopicMatcher,
    "headers": HeadersMatcher,
}

#: The exchange types every kelp transport supports.
EXCHANGE_TYPES: Final = frozenset(MATCHERS)


class UnknownExchangeType(UsageError, ValueError):
    """An exchange type kelp does not route (a UsageError, and a ValueError for code that validates)."""


def validate_exchange_type(exchange_type: str) -> str:
    """Return ``exchange_type`` if kelp can route for it; raise :class:`UnknownExchangeType` naming the
    known types."""
    if exchange_type not in MATCHERS:
        known = ", ".join(sorted(EXCHANGE_TYPES))
        hint = " (a broker plugin's type: use amqp://)" if is_plugin_type(exchange_type) else ""
        raise UnknownExchangeType(f"unknown exchange type {exchange_type!r}; expected one of: {known}{hint}")
    return exchange_type


def is_plugin_type(exchange_type: str) -> bool:
    """Whether ``exchange_type`` is named like a broker plugin's (``x-...``): accepted by :class:`Exchange`
    for brokers that route themselves, refused at declare time by the transports kelp routes for."""
    return exchange_type.startswith("x-") and len(exchange_type) > 2


class PassThroughTypes(frozenset[str]):
    """The exchange types of a transport whose broker routes: kelp's own, plus any plugin type."""

    def __contains__(self, exchange_type: object) -> bool:
        return super().__contains__(exchange_type) or (
            isinstance(exchange_type, str) and is_plugin_type(exchange_type)
        )


class BindingTable:
    """The bindings of one exchange, indexed by its type's :class:`Matcher` so that :meth:`match` is cheap.

    :meth:`copy` is cheap: a topology snapshot derived from the previous one copies what it changes, not
    every binding.
    """

    def __init__(self, exchange_type: str) -> None:
        self._type = validate_exchange_type(exchange_type)
        self._matcher = MATCHERS[exchange_type]()
        self._count = 0  # bindings
        # destination -> its bindings (an insertion-ordered set): the table's bindings, grouped
        self._by_destination: dict[Destination, dict[Binding, None]] = {}
        self._owned_dest: set[Destination] = set()  # destinations whose inner dict is this table's own
        self._exchange_dests = 0  # destinations that are exchanges

    @property
    def exchange_type(self) -> str:
        return self._type

    @property
    def topic_memo_size(self) -> int:
        """How many routing keys a topic table remembers answers for (0: none; other types: 0)."""
        matcher = self._matcher
        return matcher.memo_size if isinstance(matcher, TopicMatcher) else 0

    @topic_memo_size.setter
    def topic_memo_size(self, size: int) -> None:
        matcher = self._matcher
        if isinstance(matcher, TopicMatcher):
            matcher.memo_size = size
            matcher.memo.clear()

    @property
    def topic_visits(self) -> int:
        """Trie nodes the last topic :meth:`match` visited (0 when answered from the memo or not topic)."""
        matcher = self._matcher
        return matcher.trie.visits if isinstance(matcher, TopicMatcher) else 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Binding]:
        return iter([binding for bindings in self._by_destination.values() for binding in bindings])

    def __contains__(self, binding: object) -> bool:
        return isinstance(binding, Binding) and binding in self._by_destination.get(binding.destination, ())

    def __repr__(self) -> str:
        return f"<BindingTable {self._type} with {len(self)} bindings>"

    def copy(self) -> BindingTable:
        """A table with the same bindings; either may change afterwards without affecting the other.

        Costs a shallow copy of the top-level indexes; inner parts are copied when first changed.
        """
        other = BindingTable.__new__(BindingTable)
        other._type = self._type
        other._matcher = self._matcher.copy()
        other._count = self._count
        other._by_destination = dict(self._by_destination)
        other._owned_dest = set()
        self._owned_dest = set()  # the inner dicts are now shared by both
        other._exchange_dests = self._exchange_dests
        return other

    def destinations(self) -> set[Destination]:
        """Every destination with at least one binding in this table."""
        return set(self._by_destination)

    @property
    def routes_to_exchanges(self) -> bool:
        """True if some binding of this table points at an exchange."""
        return self._exchange_dests > 0

    def has_destination(self, destination: Destination) -> bool:
        """True if some binding of this table points at ``destination``."""
        return destination in self._by_destination

    def add(
        self, destination: Destination, routing_key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> bool:
        """Add a binding; False if exactly this binding already exists (adding is idempotent).

        For a headers exchange an invalid ``x-match`` raises :class:`InvalidXMatch` (PreconditionFailed) and
        nothing is added.
        """
        binding = Binding(destination, routing_key, _arguments(arguments))
        if binding in self:
            return False
        self._matcher.add(binding)  # first: it may refuse the binding
        bindings = inner_for_write(self._by_destination, self._owned_dest, destination)
        bindings[binding] = None
        self._count += 1
        if destination.kind == "exchange" and len(bindings) == 1:
            self._exchange_dests += 1
        return True

    def remove(
        self, destination: Destination, routing_key: str = "", arguments: Mapping[str, Any] | None = None
    ) -> bool:
        """Remove a binding; False if it did not exist."""
        binding = Binding(destination, routing_key, _arguments(arguments))
        if binding not in self:
            return False
        self._discard(binding)
        return True

    def remove_destination(self, destination: Destination) -> int:
        """Remove every binding to ``destination`` (its queue or exchange was deleted); return how many."""
        doomed = list(self._by_destination.get(destination, ()))
        for binding in doomed:
            self._discard(binding)
        return len(doomed)

    def _discard(self, binding: Binding) -> None:
        self._count -= 1
        destination = binding.destination
        bindings = inner_for_write(self._by_destination, self._owned_dest, destination)
        del bindings[binding]
        if not bindings:
            del self._by_destination[destination]
            if destination.kind == "exchange":
                self._exchange_dests -= 1
        self._matcher.discard(binding)

    def match(self, routing_key: str, headers: Mapping[str, Any] | None = None) -> set[Destination]:
        """The destinations a message with this routing key and these headers reaches (a new set)."""
        return self._matcher.match(routing_key, headers, self._by_destination)


# --- following exchange-to-exchange bindings -----------------------------------------------------------

Lookup: TypeAlias = Callable[[str], BindingTable | None] | Mapping[str, BindingTable]


def route(
    lookup: Lookup,
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
) -> set[str]:
    """The names of the queues a message published to ``exchange`` reaches.

    ``lookup`` finds an exchange's bindings: a mapping from exchange name to :class:`BindingTable`, or a
    callable returning the table or None for an exchange that does not exist. A missing exchange routes
    nowhere (the caller decides whether publishing to it is an error). Exchange-to-exchange bindings are
    followed with the same routing key and headers; each exchange is visited at most once, so cycles end.
    The result is empty when the message is unroutable. The default exchange ``""`` must be resolved by the
    caller (it names a queue, not a table); passing it raises :class:`ValueError`.
    """
    if exchange == "":
        raise ValueError(
            "the default exchange '' routes to the queue named by the routing key; resolve it first"
        )
    get = lookup.get if isinstance(lookup, Mapping) else lookup
    queues: set[str] = set()
    seen = {exchange}
    pending = [exchange]
    while pending:
        table = get(pending.pop())
        if table is None:
            continue
        for kind, name in table.match(routing_key, headers):
            if kind == "queue":
                queues.add(name)
            elif name not in seen:
                seen.add(name)
                pending.append(name)
    return queues
