"""How one binding matches a message: topic patterns and headers rules (RabbitMQ's semantics).

Pure functions, no state; :mod:`kelp.routing` indexes bindings with them and re-exports the public names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple

from kelp.exceptions import PreconditionFailed

__all__ = ["X_MATCH_MODES", "InvalidXMatch", "headers_match", "topic_match"]


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
