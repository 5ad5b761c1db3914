"""How bindings match a message (RabbitMQ's semantics): topic patterns, headers rules, and the
:class:`Matcher` of each exchange type, which indexes an exchange's bindings so that matching is cheap.

:mod:`kelp.routing` holds the table of exchange types (``MATCHERS``) and re-exports the public names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

from kelp._topic_trie import TopicTrie
from kelp.exceptions import PreconditionFailed

if TYPE_CHECKING:
    from kelp.routing import Binding, Destination

__all__ = [
    "X_MATCH_MODES",
    "DirectMatcher",
    "FanoutMatcher",
    "HeadersMatcher",
    "InvalidXMatch",
    "Matcher",
    "TopicMatcher",
    "headers_match",
    "topic_match",
]


class InvalidXMatch(PreconditionFailed, ValueError):
    """A headers binding's ``x-match`` is not a mode RabbitMQ knows: the broker refuses the binding with
    PRECONDITION_FAILED (406), as RabbitMQ does. Also a ValueError, for code that validates arguments."""


#: The ``x-match`` modes of a headers binding (the ``-with-x`` forms are RabbitMQ 3.10+).
X_MATCH_MODES: Final = frozenset({"all", "any", "all-with-x", "any-with-x"})


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
        raise InvalidXMatch(
            f"PRECONDITION_FAILED - invalid x-match value {mode!r} in a headers binding; "
            f"expected one of: {known}"
        )
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
    numbers. An invalid ``x-match`` raises :class:`InvalidXMatch` (PreconditionFailed and ValueError).
    """
    return _rule_matches(_headers_rule(binding_arguments), headers or {})


# --- matchers: one per exchange type -------------------------------------------------------------------


def _count(index: dict[Destination, int], destination: Destination, delta: int) -> None:
    count = index.get(destination, 0) + delta
    if count:
        index[destination] = count
    else:
        del index[destination]


def inner_for_write(index: dict[Any, dict[Any, Any]], owned: set[Any], key: Any) -> dict[Any, Any]:
    """``index[key]``, created, or copied first if its owner may not change it in place (copy on write)."""
    inner = index.get(key)
    if inner is None or key not in owned:
        inner = index[key] = dict(inner or {})
        owned.add(key)
    return inner


# --- exchange types: how the bindings of an exchange match ---------------------------------------------


class Matcher:
    """The index one exchange type keeps of an exchange's bindings, and how it matches a message. Each
    type's matcher is one class in :data:`MATCHERS`; :class:`BindingTable` keeps the bindings themselves.

    ``add`` raises (changing nothing) for a binding the type refuses; ``copy`` is cheap (copy on write)."""

    __slots__ = ()

    def add(self, binding: Binding) -> None: ...

    def discard(self, binding: Binding) -> None: ...

    def match(
        self, routing_key: str, headers: Mapping[str, Any] | None, every: Mapping[Destination, Any]
    ) -> set[Destination]:
        """The destinations reached (``every``: the table's destinations, for types that match all)."""
        raise NotImplementedError

    def copy(self) -> Matcher:
        raise NotImplementedError


class DirectMatcher(Matcher):
    """``direct``: the binding key equals the routing key (a dict lookup)."""

    __slots__ = ("by_key", "owned")

    def __init__(self) -> None:
        self.by_key: dict[str, dict[Destination, int]] = {}  # key -> destination -> bindings
        self.owned: set[str] = set()  # keys whose inner dict this matcher may change in place

    def add(self, binding: Binding) -> None:
        _count(inner_for_write(self.by_key, self.owned, binding.routing_key), binding.destination, 1)

    def discard(self, binding: Binding) -> None:
        dests = inner_for_write(self.by_key, self.owned, binding.routing_key)
        _count(dests, binding.destination, -1)
        if not dests:
            del self.by_key[binding.routing_key]

    def match(
        self, routing_key: str, headers: Mapping[str, Any] | None, every: Mapping[Destination, Any]
    ) -> set[Destination]:
        dests = self.by_key.get(routing_key)
        return set(dests) if dests else set()

    def copy(self) -> DirectMatcher:
        other = DirectMatcher()
        other.by_key = dict(self.by_key)
        self.owned = set()  # the inner dicts are now shared by both
        return other


class FanoutMatcher(Matcher):
    """``fanout``: every binding matches; keys are ignored."""

    __slots__ = ()

    def match(
        self, routing_key: str, headers: Mapping[str, Any] | None, every: Mapping[Destination, Any]
    ) -> set[Destination]:
        return set(every)

    def copy(self) -> FanoutMatcher:
        return self


class TopicMatcher(Matcher):
    """``topic``: a trie of binding-key words (see :mod:`kelp._topic_trie`: the cost grows with the routing
    key's words, not with the number of bindings); answers are remembered per routing key until the table
    changes."""

    __slots__ = ("memo", "memo_size", "trie")

    def __init__(self, trie: TopicTrie | None = None, memo_size: int = 1024) -> None:
        self.trie = TopicTrie() if trie is None else trie
        self.memo: dict[str, frozenset[Destination]] = {}
        #: How many routing keys are remembered with their answers; the memo is dropped on any change.
        self.memo_size = memo_size

    def add(self, binding: Binding) -> None:
        self.trie.add(binding.routing_key, binding.destination)
        self.memo.clear()

    def discard(self, binding: Binding) -> None:
        self.trie.remove(binding.routing_key, binding.destination)
        self.memo.clear()

    def match(
        self, routing_key: str, headers: Mapping[str, Any] | None, every: Mapping[Destination, Any]
    ) -> set[Destination]:
        memo = self.memo.get(routing_key)
        self.trie.visits = 0
        if memo is None:
            memo = cast("frozenset[Destination]", frozenset(self.trie.match(routing_key)))
            if self.memo_size > 0:
                if len(self.memo) >= self.memo_size:
                    del self.memo[next(iter(self.memo))]  # the oldest answer
                self.memo[routing_key] = memo
        return set(memo)

    def copy(self) -> TopicMatcher:
        return TopicMatcher(self.trie.copy(), self.memo_size)


class HeadersMatcher(Matcher):
    """``headers``: the binding arguments against the message headers (see :func:`headers_match`), a scan."""

    __slots__ = ("rules",)

    def __init__(self) -> None:
        self.rules: list[tuple[_HeadersRule, Destination]] = []

    def add(self, binding: Binding) -> None:
        self.rules.append((_headers_rule(binding.arguments), binding.destination))

    def discard(self, binding: Binding) -> None:
        self.rules.remove((_headers_rule(binding.arguments), binding.destination))

    def match(
        self, routing_key: str, headers: Mapping[str, Any] | None, every: Mapping[Destination, Any]
    ) -> set[Destination]:
        table = headers or {}
        result: set[Destination] = set()
        for rule, destination in self.rules:
            if destination not in result and _rule_matches(rule, table):
                result.add(destination)
        return result

    def copy(self) -> HeadersMatcher:
        other = HeadersMatcher()
        other.rules = list(self.rules)
        return other
