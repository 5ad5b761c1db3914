# Generated from src/kelp/testing/aio/test_routing_topic.py by scripts/unasync.py; do not edit.
"""Topic exchanges: dot-separated words; ``*`` is exactly one word, ``#`` is zero or more words."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kelp import Connection, Exchange, Queue, binding

from .helpers import Names, declared, payloads, take_all

pytestmark = pytest.mark.kelp_needs("topic")

CASES = [
    # (pattern, routing key, matches)
    ("stock.usd.nyse", "stock.usd.nyse", True),
    ("stock.usd.nyse", "stock.usd", False),
    ("stock.usd.nyse", "stock.usd.nyse.x", False),
    ("stock.*.nyse", "stock.usd.nyse", True),
    ("stock.*.nyse", "stock.nyse", False),
    ("stock.*.nyse", "stock.usd.eur.nyse", False),
    ("stock.*", "stock.usd", True),
    ("stock.*", "stock", False),
    ("stock.*", "stock.usd.nyse", False),
    ("*", "stock", True),
    ("*", "stock.usd", False),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("stock.#", "stock", True),
    ("stock.#", "stock.usd", True),
    ("stock.#", "stock.usd.nyse", True),
    ("stock.#", "stocks.usd", False),
    ("stock.#", "bond.stock", False),
    ("#", "anything.at.all", True),
    ("#", "one", True),
    ("#.nyse", "nyse", True),
    ("#.nyse", "stock.usd.nyse", True),
    ("#.nyse", "stock.nyse.usd", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b.c.d", False),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.#", "a", False),
    ("a.*.#", "a.b", True),
    ("a.*.#", "a.b.c.d", True),
    ("#.*", "a", True),
    ("#.*", "a.b.c", True),
    ("*.#.*", "a", False),
    ("*.#.*", "a.b", True),
]


@pytest.mark.parametrize(("pattern", "key", "matches"), CASES)
def test_topic_pattern(broker_url: str, names: Names, pattern: Any, key: Any, matches: Any) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        bq = declared(conn, Queue(names("q"), ex, routing_key=pattern))
        sentinel = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        producer.publish({"key": key}, exchange=ex, routing_key=key)
        producer.publish("flush", routing_key=sentinel.name)
        assert payloads(sentinel, 1) == ["flush"]  # everything published before it has been routed
        expected = [{"key": key}] if matches else []
        assert take_all(bq) == expected


def test_hash_alone_matches_every_key(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        bq = declared(conn, Queue(names("q"), ex, routing_key="#"))
        keys = ["a", "a.b", "x.y.z.w", "", "stock.usd"]
        producer = conn.Producer()
        for key in keys:
            producer.publish(key, exchange=ex, routing_key=key)
        assert payloads(bq, len(keys)) == keys


def test_message_matching_several_patterns_of_a_queue_arrives_once(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        q = Queue(
            names("q"),
            bindings=[binding(ex, "stock.#"), binding(ex, "*.usd"), binding(ex, "stock.usd")],
        )
        bq = declared(conn, q)
        producer = conn.Producer()
        producer.publish("both", exchange=ex, routing_key="stock.usd")
        producer.publish("none", exchange=ex, routing_key="bond.eur")
        producer.publish("one", exchange=ex, routing_key="bond.usd")
        assert payloads(bq, 2) == ["both", "one"]
        assert bq.get() is None


def _reference_match(pattern: list[str], words: list[str]) -> bool:
    """Topic matching written plainly, to check the broker against."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_reference_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _reference_match(rest, words[1:])


def test_random_patterns_agree_with_reference_matcher(broker_url: str, names: Names) -> None:
    rng = random.Random(20240611)
    patterns = sorted({".".join(rng.choice("ab*#") for _ in range(rng.randint(1, 4))) for _ in range(40)})
    keys = sorted({".".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(40)})
    with Connection(broker_url) as conn:
        ex = Exchange(names("ex"), "topic")
        bound = {p: declared(conn, Queue(names("q"), ex, routing_key=p)) for p in patterns}
        sentinel = declared(conn, Queue(names("q")))
        producer = conn.Producer()
        for key in keys:
            producer.publish(key, exchange=ex, routing_key=key)
        producer.publish("flush", routing_key=sentinel.name)
        assert payloads(sentinel, 1) == ["flush"]
        for pattern, bq in bound.items():
            expected = [k for k in keys if _reference_match(pattern.split("."), k.split("."))]
            assert take_all(bq) == expected, pattern
