from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp.routing import (
    EXCHANGE_TYPES,
    Arguments,
    Binding,
    BindingTable,
    Destination,
    headers_match,
    route,
    topic_match,
    validate_exchange_type,
)

Q = Destination.queue
X = Destination.exchange


# --- topic ---------------------------------------------------------------------------------------------


def reference_topic(pattern: str, key: str) -> bool:
    """The AMQP definition, recursively, with RabbitMQ's word split ("" has no words)."""

    def words(text: str) -> list[str]:
        return text.split(".") if text else []

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        head, rest = p[0], p[1:]
        if head == "#":
            return any(match(rest, k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (head == "*" or head == k[0]) and match(rest, k[1:])

    return match(words(pattern), words(key))


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("stock.#", "stock", True),
        ("stock.#", "stock.usd.nyse", True),
        ("stock.#", "stocks", False),
        ("#.x", "x", True),
        ("#.x", "a.b.x", True),
        ("#.x", "x.a", False),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("#", ".", True),
        ("*", "", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("", "", True),
        ("", "a", False),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a..c", True),  # an empty word is a word
        ("a..b", "a..b", True),
        ("a..b", "a.b", False),
        ("a.#", "a.", True),
        ("a.*", "a.", True),
        ("*.*", ".", True),
        ("a*", "ab", False),  # only whole words are wildcards
        ("a*", "a*", True),
        ("#.#", "", True),
        ("#.*.#", "", False),
        ("#.*.#", "a", True),
        ("#.a.#.b.#", "x.a.y.b", True),
        ("#.a.#.b.#", "x.b.y.a", False),
        ("a.b", "a.b", True),
        ("a+b", "a+b", True),  # regex metacharacters are literal
        ("a.(b)", "a.(b)", True),
        ("[a]", "a", False),
    ],
)
def test_topic_examples(pattern: str, key: str, expected: bool) -> None:
    assert topic_match(pattern, key) is expected
    assert reference_topic(pattern, key) is expected


topic_words = st.sampled_from(["a", "b", "c", "", "*", "#", "ab"])
key_words = st.sampled_from(["a", "b", "c", "", "ab", "*", "#"])


@given(st.lists(topic_words, max_size=7), st.lists(key_words, max_size=7))
def test_topic_matches_reference(pattern_words: list[str], key_words: list[str]) -> None:
    pattern = ".".join(pattern_words)
    key = ".".join(key_words)
    assert topic_match(pattern, key) == reference_topic(pattern, key)


@given(st.text(alphabet="ab.*#", max_size=12), st.text(alphabet="ab.", max_size=12))
def test_topic_matches_reference_on_raw_text(pattern: str, key: str) -> None:
    assert topic_match(pattern, key) == reference_topic(pattern, key)


def test_many_hashes_do_not_backtrack_exponentially() -> None:
    pattern = ".".join(["#", "a"] * 12) + ".b"
    key = ".".join(["a"] * 120)
    assert topic_match(pattern, key) is False  # completes quickly; a naive regex would not


# --- headers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "headers", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}, True),
        ({"a": 1, "b": 2}, {"a": 1}, False),
        ({"x-match": "all", "a": 1}, {"a": 2}, False),
        ({"x-match": "any", "a": 1, "b": 2}, {"b": 2}, True),
        ({"x-match": "any", "a": 1, "b": 2}, {"c": 2}, False),
        ({"x-match": "any", "a": 1}, None, False),
        ({}, None, True),  # "all" with nothing to compare matches everything
        ({"x-match": "any"}, {"a": 1}, False),  # "any" with nothing to compare matches nothing
        ({"a": None}, {"a": "whatever"}, True),  # void: presence only
        ({"a": None}, {"b": 1}, False),
        ({"x-match": "any", "a": None}, {"a": 0}, True),
        ({"a": 1, "x-extra": "y"}, {"a": 1}, True),  # plain all ignores x- arguments
        ({"x-match": "all-with-x", "a": 1, "x-extra": "y"}, {"a": 1}, False),
        ({"x-match": "all-with-x", "a": 1, "x-extra": "y"}, {"a": 1, "x-extra": "y"}, True),
        ({"x-match": "any", "x-extra": "y"}, {"x-extra": "y"}, False),
        ({"x-match": "any-with-x", "x-extra": "y"}, {"x-extra": "y"}, True),
        ({"a": True}, {"a": 1}, False),  # AMQP booleans are not numbers
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": "1"}, {"a": 1}, False),
        ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ],
)
def test_headers_examples(arguments: dict[str, Any], headers: dict[str, Any] | None, expected: bool) -> None:
    assert headers_match(arguments, headers) is expected


def test_headers_invalid_x_match() -> None:
    with pytest.raises(ValueError, match="x-match"):
        headers_match({"x-match": "some"}, {})
    table = BindingTable("headers")
    with pytest.raises(ValueError, match="x-match"):
        table.add(Q("q"), "", {"x-match": "nope"})
    assert len(table) == 0


def reference_headers(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    mode = arguments.get("x-match", "all")
    keys = [k for k in arguments if k != "x-match" and (mode.endswith("-with-x") or not k.startswith("x-"))]
    results = [k in headers and (arguments[k] is None or arguments[k] == headers[k]) for k in keys]
    return any(results) if mode.startswith("any") else all(results)


header_keys = st.sampled_from(["a", "b", "c", "x-a", "x-b"])
header_values = st.sampled_from([None, 0, 1, "s", "t"])


@given(
    st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]),
    st.dictionaries(header_keys, header_values, max_size=4),
    st.dictionaries(header_keys, st.sampled_from([0, 1, "s", "t"]), max_size=5),
)
def test_headers_match_reference(
    mode: str | None, arguments: dict[str, Any], headers: dict[str, Any]
) -> None:
    if mode is not None:
        arguments = {**arguments, "x-match": mode}
    assert headers_match(arguments, headers) == reference_headers(arguments, headers)


# --- binding tables ------------------------------------------------------------------------------------


def test_exchange_types() -> None:
    assert frozenset({"direct", "fanout", "topic", "headers"}) == EXCHANGE_TYPES
    assert validate_exchange_type("topic") == "topic"
    with pytest.raises(ValueError, match="unknown exchange type 'x-delayed'"):
        validate_exchange_type("x-delayed")
    with pytest.raises(ValueError, match="unknown exchange type"):
        BindingTable("consistent")


def test_bindings_are_a_set() -> None:
    table = BindingTable("direct")
    assert table.add(Q("q"), "k") is True
    assert table.add(Q("q"), "k") is False
    assert table.add(Q("q"), "k", {}) is False
    assert table.add(Q("q"), "k", {"x": 1}) is True  # other arguments: another binding
    assert len(table) == 2
    assert table.match("k") == {Q("q")}
    assert table.remove(Q("q"), "k") is True
    assert table.match("k") == {Q("q")}  # still bound through the other binding
    assert table.remove(Q("q"), "k") is False
    assert table.remove(Q("q"), "k", {"x": 1}) is True
    assert table.match("k") == set()
    assert len(table) == 0


def test_direct() -> None:
    table = BindingTable("direct")
    table.add(Q("a"), "red")
    table.add(Q("b"), "red")
    table.add(Q("c"), "blue")
    assert table.match("red") == {Q("a"), Q("b")}
    assert table.match("blue") == {Q("c")}
    assert table.match("green") == set()
    assert table.match("") == set()
    result = table.match("red")
    result.clear()  # callers get their own set
    assert table.match("red") == {Q("a"), Q("b")}


def test_fanout_ignores_keys() -> None:
    table = BindingTable("fanout")
    table.add(Q("a"), "x")
    table.add(Q("b"))
    table.add(X("ex"), "y")
    assert table.match("anything") == {Q("a"), Q("b"), X("ex")}
    assert table.remove_destination(Q("a")) == 1
    assert table.match("") == {Q("b"), X("ex")}


def test_topic_table_and_memo_invalidation() -> None:
    table = BindingTable("topic")
    table.add(Q("all"), "#")
    table.add(Q("usd"), "stock.usd.*")
    assert table.match("stock.usd.nyse") == {Q("all"), Q("usd")}
    assert table.match("stock.eur.nyse") == {Q("all")}
    table.add(Q("nyse"), "*.*.nyse")
    assert table.match("stock.eur.nyse") == {Q("all"), Q("nyse")}  # the memo was dropped
    table.remove(Q("all"), "#")
    assert table.match("stock.eur.nyse") == {Q("nyse")}
    assert table.match("") == set()


def test_topic_memo_is_bounded() -> None:
    table = BindingTable("topic")
    table.topic_memo_size = 4
    table.add(Q("q"), "a.*")
    for i in range(20):
        assert table.match(f"a.{i}") == {Q("q")}
    assert len(table._matcher.memo) <= 4
    table.topic_memo_size = 0
    table.add(Q("r"), "#")
    assert table.match("a.1") == {Q("q"), Q("r")}
    assert table._matcher.memo == {}


def test_headers_table() -> None:
    table = BindingTable("headers")
    table.add(Q("pdf"), "", {"format": "pdf", "type": "report"})
    table.add(Q("any"), "", {"x-match": "any", "format": "pdf", "type": "log"})
    table.add(Q("any"), "", {"format": "zip"})
    assert table.match("", {"format": "pdf", "type": "report"}) == {Q("pdf"), Q("any")}
    assert table.match("", {"type": "log"}) == {Q("any")}
    assert table.match("", {"format": "zip"}) == {Q("any")}
    assert table.match("", None) == set()
    table.remove(Q("any"), "", {"format": "zip"})
    assert table.match("", {"format": "zip"}) == set()


def test_remove_destination_and_iteration() -> None:
    table = BindingTable("topic")
    table.add(Q("a"), "x.#")
    table.add(Q("a"), "y.*", {"k": [1, {"n": 2}]})
    table.add(Q("b"), "x.#")
    assert {b.routing_key for b in table} == {"x.#", "y.*"}
    assert Binding(Q("a"), "y.*", {"k": [1, {"n": 2}]}) in table  # type: ignore[arg-type]
    assert table.destinations() == {Q("a"), Q("b")}
    assert table.remove_destination(Q("a")) == 2
    assert table.remove_destination(Q("a")) == 0
    assert [b.destination for b in table] == [Q("b")]
    assert table.match("x.1") == {Q("b")}
    assert table.match("y.1") == set()


def test_arguments_are_frozen_and_hashable() -> None:
    items = [1, 2]
    args = Arguments({"b": items, "a": {"nested": [3]}})
    items.append(9)  # later changes to the source do not leak in
    assert args == {"a": {"nested": [3]}, "b": [1, 2]}
    assert args == Arguments({"a": {"nested": (3,)}, "b": (1, 2)})
    assert hash(args) == hash(Arguments({"b": [1, 2], "a": {"nested": [3]}}))
    assert args != {"b": [1, 2]}
    assert args != 3
    assert dict(args)["b"] == (1, 2)
    with pytest.raises(TypeError, match="must be str"):
        Arguments({1: "x"})  # type: ignore[dict-item]

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="cannot be frozen"):
        Arguments({"a": Unhashable()})
    assert Binding(Q("q"), "k", {"a": 1}) == Binding(Q("q"), "k", Arguments({"a": 1}))  # type: ignore[arg-type]


# --- routing across exchanges --------------------------------------------------------------------------


def test_route_follows_exchange_bindings_with_cycles() -> None:
    tables = {
        name: BindingTable(kind) for name, kind in [("in", "topic"), ("mid", "fanout"), ("loop", "direct")]
    }
    tables["in"].add(Q("q1"), "a.*")
    tables["in"].add(X("mid"), "#")
    tables["mid"].add(Q("q2"))
    tables["mid"].add(X("loop"))
    tables["loop"].add(X("in"), "a.b")  # a cycle back to the start
    tables["loop"].add(X("mid"), "a.b")
    tables["loop"].add(Q("q3"), "a.b")
    tables["loop"].add(X("missing"), "a.b")  # bound to an exchange that no longer exists
    assert route(tables, "in", "a.b") == {"q1", "q2", "q3"}
    assert route(tables, "in", "z") == {"q2"}
    assert route(tables.get, "mid", "a.b") == {"q1", "q2", "q3"}
    assert route(tables, "nope", "a.b") == set()
    with pytest.raises(ValueError, match="default exchange"):
        route(tables, "", "q1")


def test_route_headers_through_exchange() -> None:
    tables = {"h": BindingTable("headers"), "f": BindingTable("fanout")}
    tables["h"].add(X("f"), "", {"kind": "a"})
    tables["f"].add(Q("q"))
    assert route(tables, "h", "", {"kind": "a"}) == {"q"}
    assert route(tables, "h", "", {"kind": "b"}) == set()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["e0", "e1", "e2", "e3"]),
            st.sampled_from(["e0", "e1", "e2", "e3", "q0", "q1", "q2"]),
            st.sampled_from(["a", "*", "#", "a.b", "a.#"]),
        ),
        max_size=20,
    ),
    st.sampled_from(["e0", "e1", "e2", "e3"]),
    st.sampled_from(["a", "a.b", "b", ""]),
)
def test_route_matches_graph_reachability(edges: list[tuple[str, str, str]], start: str, key: str) -> None:
    tables = {f"e{i}": BindingTable("topic") for i in range(4)}
    for source, target, pattern in edges:
        dest = Q(target) if target.startswith("q") else X(target)
        tables[source].add(dest, pattern)
    # Reference: a plain graph search over the edges whose pattern matches.
    seen, frontier, queues = {start}, [start], set()
    while frontier:
        source = frontier.pop()
        for s, target, pattern in edges:
            if s == source and reference_topic(pattern, key):
                if target.startswith("q"):
                    queues.add(target)
                elif target not in seen:
                    seen.add(target)
                    frontier.append(target)
    assert route(tables, start, key) == queues
