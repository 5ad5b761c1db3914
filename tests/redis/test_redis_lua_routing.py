"""The Lua router agrees with kelp.routing: topic patterns, headers rules, and whole routes (hypothesis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kelp_redis_kit import with_options

from kelp import Connection, Exchange, Queue
from kelp._broker.redis.codec import binding_member, canon, headers_canon
from kelp._broker.redis.script import SHA, SOURCE
from kelp.routing import BindingTable, Destination, headers_match, route, topic_match

WORDS = ["a", "b", "ab", "", "*", "#"]
patterns = st.lists(st.sampled_from(WORDS), max_size=6).map(".".join)
keys = st.lists(st.sampled_from(["a", "b", "ab", "", "c"]), max_size=7).map(".".join)

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 2),
    st.sampled_from([1.0, 1.5, -0.5, 2**40]),
    st.sampled_from(["1", "a", "", "väl"]),
    st.sampled_from([b"a", b"1"]),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["k", "n"]), st.integers(0, 1), max_size=2),
)
header_names = st.sampled_from(["a", "b", "x-c", "format"])
binding_arguments = st.dictionaries(header_names, values, max_size=3).flatmap(
    lambda args: st.sampled_from([None, "all", "any", "all-with-x", "any-with-x"]).map(
        lambda mode: args if mode is None else {**args, "x-match": mode}
    )
)
message_headers = st.dictionaries(header_names, values, max_size=4)

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def client(redis_base: str) -> Iterator[Any]:
    connection = redis.Redis.from_url(redis_base)
    connection.execute_command("SCRIPT", "LOAD", SOURCE)
    try:
        yield connection
    finally:
        connection.close()


def lua(client: Any, op: str, *args: Any) -> Any:
    return client.execute_command("EVALSHA", SHA, 1, "{lua-test}:", op, *args)


@SETTINGS
@given(st.lists(st.tuples(patterns, keys), min_size=1, max_size=20))
def test_lua_topic_match_agrees_with_kelp_routing(client, pairs):
    flat = [text for pair in pairs for text in pair]
    answers = lua(client, "topic", *flat)
    assert [bool(answer) for answer in answers] == [topic_match(p, k) for p, k in pairs]


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("stock.#", "stock", True),
        ("#.x", "x", True),
        ("#", "", True),
        ("a.*.c", "a.c", False),
        ("a.#.c", "a.c", True),
        ("a*", "ab", False),
        ("*", "", False),
        ("a..b", "a..b", True),
        ("#.#", "a.b", True),
    ],
)
def test_lua_topic_examples(client, pattern, key, expected):
    assert lua(client, "topic", pattern, key) == [int(expected)]
    assert topic_match(pattern, key) is expected


@SETTINGS
@given(binding_arguments, message_headers)
def test_lua_headers_match_agrees_with_kelp_routing(client, arguments, headers):
    member, error = binding_member("queue", "q", "", arguments)
    assert error == ""
    [answer] = lua(client, "headers", member, headers_canon(headers))
    assert bool(answer) == headers_match(arguments, headers)


@given(values, values)
def test_canon_is_equal_exactly_when_headers_match_says_equal(expected, actual):
    if expected is None:
        return  # None in a binding means "present", not a value
    assert (canon(expected) == canon(actual)) == headers_match({"h": expected}, {"h": actual})


def test_invalid_x_match_is_refused_like_kelp_routing():
    _, error = binding_member("queue", "q", "", {"x-match": "most"})
    assert "invalid x-match" in error
    with pytest.raises(ValueError, match="invalid x-match"):
        headers_match({"x-match": "most"}, {})


EXCHANGE_TYPES = ["direct", "fanout", "topic", "headers"]
bindings = st.lists(
    st.tuples(
        st.sampled_from(["e0", "e1", "e2"]),  # source
        st.sampled_from(["queue", "queue", "exchange"]),
        st.sampled_from(["0", "1", "2"]),  # destination suffix
        patterns,
        binding_arguments,
    ),
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(EXCHANGE_TYPES), min_size=3, max_size=3),
    bindings,
    st.lists(st.tuples(keys, message_headers), min_size=1, max_size=5),
)
def test_lua_route_agrees_with_kelp_routing(redis_base, types, edges, messages):
    """Exchanges and bindings declared through the transport, routed by the script and by kelp.routing."""
    url = with_options(redis_base, prefix=uuid.uuid4().hex[:12])
    tables = {f"e{i}": BindingTable(kind) for i, kind in enumerate(types)}
    with Connection(url) as conn:
        channel = conn.default_channel
        for name, table in tables.items():
            Exchange(name, table.exchange_type)(channel).declare()
        for i in range(3):
            Queue(f"q{i}")(channel).declare()
        for source, kind, suffix, key, arguments in edges:
            destination = ("q" if kind == "queue" else "e") + suffix
            if kind == "queue":
                channel.queue_bind(destination, source, key, arguments=arguments)
            else:
                channel.exchange_bind(destination, source, key, arguments=arguments)
            tables[source].add(Destination(kind, destination), key, arguments)
        client = conn.transport._client  # type: ignore[union-attr]
        prefix = "{" + conn.transport.prefix + "}:"  # type: ignore[union-attr]
        for key, headers in messages:
            expected = route(tables, "e0", key, headers)
            answer = client.execute_command(
                "EVALSHA", SHA, 1, prefix, "route", "e0", key, headers_canon(headers)
            )
            assert {name.decode() for name in answer} == expected


# --- the topic trie: kept right by bind, unbind and delete; read by words, not by bindings -------------

trie_ops = st.lists(
    st.tuples(st.sampled_from(["bind", "bind", "unbind", "delete"]), st.sampled_from("0123"), patterns),
    max_size=25,
)


def _prefix(conn: Connection) -> tuple[Any, str]:
    transport = conn.transport
    return transport._client, "{" + transport.prefix + "}:"  # type: ignore[union-attr]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trie_ops, st.lists(keys, min_size=1, max_size=6))
def test_lua_topic_trie_follows_bind_unbind_and_delete(redis_base, ops, probe):
    url = with_options(redis_base, prefix=uuid.uuid4().hex[:12])
    table = BindingTable("topic")
    with Connection(url) as conn:
        channel = conn.default_channel
        Exchange("t", "topic")(channel).declare()
        for i in range(4):
            Queue(f"q{i}", durable=False)(channel).declare()
        for op, suffix, pattern in ops:
            queue = f"q{suffix}"
            if op == "bind":
                channel.queue_bind(queue, "t", pattern)
                table.add(Destination.queue(queue), pattern)
            elif op == "unbind":
                channel.queue_unbind(queue, "t", pattern)
                table.remove(Destination.queue(queue), pattern)
            else:
                channel.queue_delete(queue)
                Queue(queue, durable=False)(channel).declare()
                table.remove_destination(Destination.queue(queue))
        client, prefix = _prefix(conn)
        for key in probe:
            answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "t", key, "")
            assert {name.decode() for name in answer} == route({"t": table}, "t", key)
        if not len(table):  # every node pruned: nothing is left of the trie
            assert client.exists(prefix + "xt:t") == 0


def test_lua_topic_route_reads_nodes_by_words_not_bindings(redis_url):
    bindings = 3000
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("big", "topic")(channel).declare()
        client, prefix = _prefix(conn)
        table = BindingTable("topic")
        for i in range(bindings):
            channel.queue_declare(f"q{i}", durable=False)
            pattern = f"r{i}.*.created" if i % 2 else f"*.r{i}.#"
            channel.queue_bind(f"q{i}", "big", pattern)
            table.add(Destination.queue(f"q{i}"), pattern)
        channel.queue_bind("q0", "big", "#")
        table.add(Destination.queue("q0"), "#")
        for key in ("r7.eu.created", "x.r8.y.z", "r7", "nothing.here", "", "r2999.*.created", "#.r8.#"):
            expected = route({"big": table}, "big", key)
            answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "big", key, "")
            assert {name.decode() for name in answer} == expected
            reached, visits = client.execute_command("EVALSHA", SHA, 1, prefix, "routecost", "big", key, "")
            assert reached == len(expected)
            assert visits <= 3 + 2 * len(key.split(".")), (key, visits)


def test_lua_topic_trie_is_built_for_bindings_stored_before_it(redis_url):
    """A topic exchange whose bindings a kelp without the trie stored gets its trie on first use."""
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("old", "topic")(channel).declare()
        table = BindingTable("topic")
        for i, pattern in enumerate(["a.*", "#.b", "a.#", "a.*", "#"]):
            Queue(f"q{i}")(channel).declare()
            channel.queue_bind(f"q{i}", "old", pattern)
            table.add(Destination.queue(f"q{i}"), pattern)
        client, prefix = _prefix(conn)
        client.delete(prefix + "xt:old")  # as an older kelp left it: no trie, no flag
        client.hdel(prefix + "x:old", "trie")
        channel.queue_unbind("q0", "old", "a.*")
        table.remove(Destination.queue("q0"), "a.*")
        for key in ("a.b", "a", "b", "x.y.b", ""):
            answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "old", key, "")
            assert {name.decode() for name in answer} == route({"old": table}, "old", key)


def test_deleting_a_queue_finds_its_bindings_without_the_destination_index(redis_url):
    """Bindings stored before the per-destination index still go with their queue."""
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("t", "topic")(channel).declare()
        Queue("q")(channel).declare()
        Queue("keep")(channel).declare()
        for pattern in ("a.#", "b.*"):
            channel.queue_bind("q", "t", pattern)
            channel.queue_bind("keep", "t", pattern)
        client, prefix = _prefix(conn)
        client.delete(prefix + "rbm:q:q")
        channel.queue_delete("q")
        answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "t", "a.x", "")
        assert [name.decode() for name in answer] == ["keep"]
        members = client.smembers(prefix + "xb:t")
        assert len(members) == 2


def test_lua_topic_walk_with_many_hashes_stays_small(redis_url):
    """A binding key with many "#" cannot make a publish walk (and block Redis) for long."""
    pattern = ".".join(["#", "a"] * 12) + ".b"
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("t", "topic")(channel).declare()
        Queue("q")(channel).declare()
        channel.queue_bind("q", "t", pattern)
        client, prefix = _prefix(conn)
        for key, expected in ((".".join(["a"] * 120), 0), (".".join(["a"] * 120) + ".b", 1)):
            assert topic_match(pattern, key) is bool(expected)
            reached, visits = client.execute_command("EVALSHA", SHA, 1, prefix, "routecost", "t", key, "")
            assert reached == expected
            assert visits <= 26 * 122


def test_lua_topic_trie_catches_up_with_bindings_made_behind_its_back(redis_url):
    """Bindings an older kelp stores (in the binding set and key index, not the trie) are routed to."""
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("t", "topic")(channel).declare()
        Queue("new")(channel).declare()
        Queue("old")(channel).declare()
        channel.queue_bind("new", "t", "a.#")
        client, prefix = _prefix(conn)
        member, _ = binding_member("queue", "old", "*.b", None)
        client.sadd(prefix + "xb:t", member)  # what an older kelp's bind writes
        client.hset(prefix + "xk:t", "*.b", '{"q:old":1}')
        client.hincrby(prefix + "rb:q:old", "t", 1)
        answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "t", "a.b", "")
        assert sorted(name.decode() for name in answer) == ["new", "old"]
        channel.queue_unbind("old", "t", "*.b")
        answer = client.execute_command("EVALSHA", SHA, 1, prefix, "route", "t", "a.b", "")
        assert [name.decode() for name in answer] == ["new"]
