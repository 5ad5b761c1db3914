"""The index of a topic exchange's bindings: a trie of pattern words, as RabbitMQ keeps it.

A binding key ``a.*.#`` is the path ``a`` -> ``*`` -> ``#`` from the root; the node at its end holds the
destinations bound with that key. Matching a routing key walks only the edges its words can take (the word
itself, ``*``, and ``#`` for any number of words), so its cost grows with the key's words and with the
wildcards on the way, not with the number of bindings.

Copies share nodes: a table copied from another (a topology snapshot derived from the previous one) copies
a node only when it changes it, so one more binding costs the nodes on one path. Pure code, no locks.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

__all__ = ["TopicTrie", "pattern_words"]

_HASH: Final = "#"
_STAR: Final = "*"


def pattern_words(pattern: str) -> tuple[str, ...]:
    """The words of a binding key, with runs of ``#`` collapsed (``#.#`` matches what ``#`` matches)."""
    words: list[str] = []
    for word in pattern.split(".") if pattern else ():
        if not (word == _HASH and words and words[-1] == _HASH):
            words.append(word)
    return tuple(words)


class _Node:
    __slots__ = ("children", "dests", "owner")

    def __init__(self, owner: object, children: dict[str, _Node], dests: dict[Hashable, int]) -> None:
        self.owner = owner  # the trie allowed to change this node in place
        self.children = children
        self.dests = dests  # destination -> number of bindings with this node's key to it


class TopicTrie:
    """Destinations by topic binding key, matched by routing key. Not thread-safe."""

    __slots__ = ("_root", "_token", "visits")

    def __init__(self) -> None:
        self._token = object()
        self._root = _Node(self._token, {}, {})
        #: Nodes the last :meth:`match` visited (a cost measure that does not depend on timing).
        self.visits = 0

    def copy(self) -> TopicTrie:
        """A trie with the same bindings; both may change afterwards without affecting the other."""
        other = TopicTrie()
        other._root = self._root
        self._token = object()  # nodes built so far are now shared: neither side changes them in place
        return other

    def _own(self, node: _Node) -> _Node:
        if node.owner is self._token:
            return node
        return _Node(self._token, dict(node.children), dict(node.dests))

    def add(self, pattern: str, destination: Hashable) -> None:
        """Count one more binding with key ``pattern`` to ``destination``."""
        node = self._root = self._own(self._root)
        for word in pattern_words(pattern):
            child = node.children.get(word)
            child = _Node(self._token, {}, {}) if child is None else self._own(child)
            node.children[word] = child
            node = child
        node.dests[destination] = node.dests.get(destination, 0) + 1

    def remove(self, pattern: str, destination: Hashable) -> None:
        """Count one binding fewer with key ``pattern`` to ``destination`` (which must be there)."""
        words = pattern_words(pattern)
        path = [self._own(self._root)]
        self._root = path[0]
        for word in words:
            child = self._own(path[-1].children[word])
            path[-1].children[word] = child
            path.append(child)
        dests = path[-1].dests
        count = dests[destination] - 1
        if count:
            dests[destination] = count
        else:
            del dests[destination]
        # Prune the nodes left with nothing below them, so the walk never visits dead branches.
        for depth in range(len(words), 0, -1):
            node = path[depth]
            if node.dests or node.children:
                break
            del path[depth - 1].children[words[depth - 1]]

    def match(self, routing_key: str) -> set[Hashable]:
        """The destinations of every binding key that matches ``routing_key`` (see routing.topic_match)."""
        words = routing_key.split(".") if routing_key else []
        last = len(words)
        found: set[Hashable] = set()
        # Depth-first over (node, index of the next word), with a stack rather than recursion (a key may
        # have many words), each pair once: patterns with several "#" reach a pair by many ways, and
        # without this the walk would grow with the number of ways rather than with nodes * words.
        pending = [(self._root, 0)]
        seen: set[tuple[int, int]] = set()
        while pending:
            node, i = pending.pop()
            if (id(node), i) in seen:
                continue
            seen.add((id(node), i))
            children = node.children
            if i == last:
                found.update(node.dests)
            else:
                word = words[i]
                if word != _STAR and word != _HASH:  # a literal "*" or "#" is matched by the wildcard edges
                    child = children.get(word)
                    if child is not None:
                        pending.append((child, i + 1))
                child = children.get(_STAR)
                if child is not None:
                    pending.append((child, i + 1))
            hash_ = children.get(_HASH)
            if hash_ is not None:  # "#" swallows zero or more words: try every place it can stop
                pending.extend((hash_, j) for j in range(i, last + 1))
        self.visits = len(seen)
        return found
