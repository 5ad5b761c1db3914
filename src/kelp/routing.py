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

import functools
import re
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias, cast

from kelp._topic_trie import TopicTrie

__all__ = [
    "EXCHANGE_TYPES",
    "X_MATCH_MODES",
    "Arguments",
    "Binding",
    "BindingTable",
    "Destination",
    "Lookup",
    "headers_match",
    "route",
    "topic_match",
    "validate_exchange_type",
]

#: The exchange types every kelp transport supports.
EXCHANGE_TYPES: Final = frozenset({"direct", "fanout", "topic", "headers"})

#: The ``x-match`` modes of a headers binding (the ``-with-x`` forms are RabbitMQ 3.10+).
X_MATCH_MODES: Final = frozenset({"all", "any", "all-with-x", "any-with-x"})


def validate_exchange_type(exchange_type: str) -> str:
    """Return ``exchange_type`` if kelp can route for it; raise :class:`ValueError` naming the known types."""
    if exchange_type not in EXCHANGE_TYPES:
        known = ", ".join(sorted(EXCHANGE_TYPES))
        raise ValueError(f"unknown exchange type {exchange_type!r}; expected one of: {known}")
    return exchange_type


# --- topic patterns ------------------------------------------------------------------------------------

# A routing key is a sequence of words; the empty key has no words, and an empty word ("a..b") is a word.
# The regex form matches the key with a "." put in front of every word ("a.b" -> ".a.b", "" -> ""), so a
# word is always r"\.[^.]*" and "#" becomes a repetition of that unit.
_WORD: Final = r"\.[^.]*"


def _words(key: str) -> list[str]:
    return key.split(".") if key else []


def _match_words(pattern: list[str], words: list[str]) -> bool:
    """Glob matching over words with backtracking to the last ``#`` only: O(len(pattern) * len(words))."""
    p = w = 0
    star = -1  # index in pattern of the last "#" seen
    resume = 0  # index in words where that "#" currently stops
    while w < len(words):
        if p < len(pattern) and pattern[p] == "#":
            star, resume = p, w
            p += 1
        elif p < len(pattern) and (pattern[p] == "*" or pattern[p] == words[w]):
            p += 1
            w += 1
        elif star >= 0:
            resume += 1  # let the last "#" swallow one more word and retry
            p, w = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


@functools.lru_cache(maxsize=4096)
def _compile_topic(pattern: str) -> Callable[[str], bool]:
    """A predicate over routing keys for one binding pattern, built once per distinct pattern."""
    words: list[str] = []
    for word in _words(pattern):
        if not (word == "#" and words and words[-1] == "#"):  # "#.#" matches exactly what "#" matches
            words.append(word)
    hashes = words.count("#")
    if hashes == 0 and "*" not in words:
        return pattern.__eq__
    if hashes > 1:
        # A regex with several "#" can backtrack polynomially in the key length; the word matcher cannot.
        return lambda key: _match_words(words, _words(key))
    source = "".join(
        f"(?:{_WORD})*" if word == "#" else _WORD if word == "*" else r"\." + re.escape(word)
        for word in words
    )
    fullmatch = re.compile(source).fullmatch
    return lambda key: fullmatch("." + key if key else "") is not None


def topic_match(pattern: str, routing_key: str) -> bool:
    """True if the topic binding key ``pattern`` matches ``routing_key``, exactly as RabbitMQ decides.

    Both are split on ``.`` into words; the empty string has no words and an empty word (``a..b``) is a
    word. ``*`` matches exactly one word and ``#`` zero or more, so ``stock.#`` matches ``stock``, ``#.x``
    matches ``x``, ``#`` matches everything including ``""``, and ``a.*.c`` does not match ``a.c``. Only a
    whole word is a wildcard: ``a*`` is literal. Patterns are compiled once and cached.
    """
    return _compile_topic(pattern)(routing_key)


# --- headers -------------------------------------------------------------------------------------------


def _same_value(expected: Any, actual: Any) -> bool:
    # AMQP tables are typed: a boolean never equals a number, although Python says True == 1.
    if isinstance(expected, bool) != isinstance(actual, bool):
        return False
    if isinstance(expected, tuple) and isinstance(actual, list):  # bound arrays are frozen into tuples
        actual = tuple(actual)
    return bool(expected == actual)


class _HeadersRule(NamedTuple):
    any: bool
    items: tuple[tuple[str, Any], ...]


def _headers_rule(arguments: Mapping[str, Any]) -> _HeadersRule:
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    if mode not in X_MATCH_MODES:
        known = ", ".join(sorted(X_MATCH_MODES))
        raise ValueError(f"invalid x-match value {mode!r} in a headers binding; expected one of: {known}")
    with_x = mode.endswith("-with-x")
    items = tuple(
        (key, value)
        for key, value in arguments.items()
        if key != "x-match" and (with_x or not key.startswith("x-"))
    )
    return _HeadersRule(mode.startswith("any"), items)


def _rule_matches(rule: _HeadersRule, headers: Mapping[str, Any]) -> bool:
    missing = object()
    if rule.any:
        for key, expected in rule.items:
            actual = headers.get(key, missing)
            if actual is not missing and (expected is None or _same_value(expected, actual)):
                return True
        return False
    for key, expected in rule.items:
        actual = headers.get(key, missing)
        if actual is missing or (expected is not None and not _same_value(expected, actual)):
            return False
    return True


def headers_match(binding_arguments: Mapping[str, Any], headers: Mapping[str, Any] | None) -> bool:
    """True if a headers-exchange binding with ``binding_arguments`` matches a message's ``headers``.

    ``x-match`` chooses the rule (RabbitMQ semantics):

    * ``all`` (the default) - every binding argument is present in the headers with an equal value;
    * ``any`` - at least one is;
    * ``all-with-x`` / ``any-with-x`` - the same, but arguments whose names start with ``x-`` take part;
      plain ``all`` and ``any`` ignore them. ``x-match`` itself never takes part.

    A binding value of ``None`` (AMQP void) matches on the key's presence alone. ``all`` with no arguments
    left to compare matches every message; ``any`` with none matches no message. Booleans never equal
    numbers. An invalid ``x-match`` raises :class:`ValueError`.
    """
    return _rule_matches(_headers_rule(binding_arguments), headers or {})


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
        raise TypeError(f"binding argument value of type {type(value).__name__} cannot be frozen")
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
                raise TypeError(f"binding argument names must be str, not {type(key).__name__}")
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


def _count(index: dict[Destination, int], destination: Destination, delta: int) -> None:
    count = index.get(destination, 0) + delta
    if count:
        index[destination] = count
    else:
        del index[destination]


class BindingTable:
    """The bindings of one exchange, indexed for its type so that :meth:`match` is cheap.

    ``direct`` looks the routing key up in a dict; ``fanout`` returns every destination; ``topic`` walks a
    trie of binding-key words (see :mod:`kelp._topic_trie`: the cost grows with the routing key's words,
    not with the number of bindings) and remembers the answer per routing key until the table changes;
    ``headers`` scans the bindings. :meth:`copy` is cheap: a topology snapshot derived from the previous
    one copies what it changes, not every binding.
    """

    #: How many routing keys a topic table remembers answers for; the memo is dropped on any change.
    topic_memo_size: int = 1024

    def __init__(self, exchange_type: str) -> None:
        self._type = validate_exchange_type(exchange_type)
        self._count = 0  # bindings
        # destination -> its bindings (an insertion-ordered set): the table's bindings, grouped
        self._by_destination: dict[Destination, dict[Binding, None]] = {}
        self._by_key: dict[str, dict[Destination, int]] = {}  # direct: key -> destination -> count
        # Keys of the inner dicts above that this table may change in place (the others it shares with a
        # copy, and copies before changing).
        self._owned_dest: set[Destination] = set()
        self._owned_key: set[str] = set()
        self._exchange_dests = 0  # destinations that are exchanges
        self._trie = TopicTrie() if self._type == "topic" else None
        self._memo: dict[str, frozenset[Destination]] = {}
        self._headers: list[tuple[_HeadersRule, Destination]] = []

    @property
    def exchange_type(self) -> str:
        return self._type

    @property
    def topic_visits(self) -> int:
        """Trie nodes the last topic :meth:`match` visited (0 when answered from the memo or not topic)."""
        return self._trie.visits if self._trie is not None else 0

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
        other._count = self._count
        other._by_destination = dict(self._by_destination)
        other._by_key = dict(self._by_key)
        other._owned_dest, other._owned_key = set(), set()
        self._owned_dest, self._owned_key = set(), set()  # the inner dicts are now shared by both
        other._exchange_dests = self._exchange_dests
        other._trie = self._trie.copy() if self._trie is not None else None
        other._memo = {}
        other._headers = list(self._headers)
        return other

    @staticmethod
    def _inner(index: dict[Any, dict[Any, Any]], owned: set[Any], key: Any) -> dict[Any, Any]:
        """``index[key]``, created, or copied first if this table may not change it in place."""
        inner = index.get(key)
        if inner is None or key not in owned:
            inner = index[key] = dict(inner or {})
            owned.add(key)
        return inner

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

        For a headers exchange an invalid ``x-match`` raises :class:`ValueError` and nothing is added.
        """
        binding = Binding(destination, routing_key, _arguments(arguments))
        if binding in self:
            return False
        rule = _headers_rule(binding.arguments) if self._type == "headers" else None
        bindings = self._inner(self._by_destination, self._owned_dest, destination)
        bindings[binding] = None
        self._count += 1
        if destination.kind == "exchange" and len(bindings) == 1:
            self._exchange_dests += 1
        if rule is not None:
            self._headers.append((rule, destination))
        elif self._trie is not None:
            self._trie.add(routing_key, destination)
        elif self._type == "direct":
            _count(self._inner(self._by_key, self._owned_key, routing_key), destination, 1)
        self._memo.clear()
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
        bindings = self._inner(self._by_destination, self._owned_dest, destination)
        del bindings[binding]
        if not bindings:
            del self._by_destination[destination]
            if destination.kind == "exchange":
                self._exchange_dests -= 1
        if self._type == "headers":
            rule = _headers_rule(binding.arguments)
            self._headers.remove((rule, destination))
        elif self._trie is not None:
            self._trie.remove(binding.routing_key, destination)
        elif self._type == "direct":
            dests = self._inner(self._by_key, self._owned_key, binding.routing_key)
            _count(dests, destination, -1)
            if not dests:
                del self._by_key[binding.routing_key]
        self._memo.clear()

    def match(self, routing_key: str, headers: Mapping[str, Any] | None = None) -> set[Destination]:
        """The destinations a message with this routing key and these headers reaches (a new set)."""
        kind = self._type
        if kind == "direct":
            dests = self._by_key.get(routing_key)
            return set(dests) if dests else set()
        if self._trie is not None:
            memo = self._memo.get(routing_key)
            self._trie.visits = 0
            if memo is None:
                memo = cast("frozenset[Destination]", frozenset(self._trie.match(routing_key)))
                if self.topic_memo_size > 0:
                    if len(self._memo) >= self.topic_memo_size:
                        del self._memo[next(iter(self._memo))]  # the oldest answer
                    self._memo[routing_key] = memo
            return set(memo)
        if kind == "fanout":
            return set(self._by_destination)
        table = headers or {}
        result: set[Destination] = set()
        for rule, destination in self._headers:
            if destination not in result and _rule_matches(rule, table):
                result.add(destination)
        return result


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
