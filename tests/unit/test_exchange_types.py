"""Exchange types are one table (type -> how a binding matches); each transport says which it supports."""

from __future__ import annotations

import pytest

import kelp
from kelp.aio.transport.amqp import AmqpTransport
from kelp.aio.transport.memory import MemoryTransport
from kelp.aio.transport.sqlite import SqliteTransport
from kelp.exceptions import PreconditionFailed, UsageError
from kelp.routing import (
    EXCHANGE_TYPES,
    MATCHERS,
    BindingTable,
    Destination,
    Matcher,
    UnknownExchangeType,
    validate_exchange_type,
)

Q = Destination.queue


def test_the_table_names_every_type_kelp_routes() -> None:
    assert set(MATCHERS) == {"direct", "fanout", "topic", "headers"} == EXCHANGE_TYPES
    for make in MATCHERS.values():
        assert isinstance(make(), Matcher)


BINDINGS = {
    "direct": [("a", "a", None), ("b", "b", None)],
    "fanout": [("a", "", None), ("b", "x", None)],
    "topic": [("a", "a.*", None), ("b", "#", None), ("c", "b.*", None)],
    "headers": [("a", "", {"k": 1}), ("b", "", {"x-match": "any", "k": 1, "j": 2}), ("c", "", {"k": 2})],
}
MESSAGE = {"direct": ("a", None), "fanout": ("z", None), "topic": ("a.x", None), "headers": ("", {"k": 1})}
REACHED = {"direct": {"a"}, "fanout": {"a", "b"}, "topic": {"a", "b"}, "headers": {"a", "b"}}


@pytest.mark.parametrize("kind", sorted(MATCHERS))
def test_each_type_matches_by_its_matcher_and_copies_apart(kind: str) -> None:
    table = BindingTable(kind)
    for name, key, arguments in BINDINGS[kind]:
        table.add(Q(name), key, arguments)
    key, headers = MESSAGE[kind]
    assert {d.name for d in table.match(key, headers)} == REACHED[kind]
    copy = table.copy()
    for name, _, _ in BINDINGS[kind]:
        copy.remove_destination(Q(name))
    assert copy.match(key, headers) == set()
    assert {d.name for d in table.match(key, headers)} == REACHED[kind]  # the original is untouched


def test_an_unknown_type_is_a_clear_kelp_error() -> None:
    with pytest.raises(UnknownExchangeType, match="use amqp://"):
        validate_exchange_type("x-delayed-message")
    assert issubclass(UnknownExchangeType, UsageError)
    assert issubclass(UnknownExchangeType, ValueError)
    with pytest.raises(UsageError, match="unknown exchange type 'bogus'"):
        kelp.Exchange("e", "bogus")


def test_plugin_types_are_accepted_by_the_entity_and_passed_through_by_amqp_only() -> None:
    exchange = kelp.Exchange("e", "x-consistent-hash")
    assert exchange.type == "x-consistent-hash"
    amqp_types = AmqpTransport.implements.exchange_type
    assert all(t in amqp_types for t in ("x-delayed-message", "x-consistent-hash", "direct"))
    assert "bogus" not in amqp_types
    for transport in (MemoryTransport, SqliteTransport):
        assert transport.implements.exchange_type == EXCHANGE_TYPES
        assert "x-delayed-message" not in transport.implements.exchange_type


def test_a_brokered_transport_refuses_a_plugin_type_when_declared() -> None:
    with kelp.Connection("memory://exchange-types") as conn:
        assert not conn.supports_exchange_type("x-delayed-message")
        assert conn.supports_exchange_type("topic")
        with pytest.raises(UsageError, match="unknown exchange type 'x-delayed-message'"):
            kelp.Exchange("later", "x-delayed-message")(conn.default_channel).declare()
        kelp.Exchange("now", "topic")(conn.default_channel).declare()  # the channel is still usable


def test_bad_binding_arguments_are_refused_as_the_broker_would() -> None:
    with kelp.Connection("memory://exchange-types-args") as conn:
        channel = conn.default_channel
        channel.exchange_declare("args", "headers")
        channel.queue_declare("args-q")
        with pytest.raises(PreconditionFailed, match="names must be str"):
            channel.queue_bind("args-q", "args", "", arguments={1: "x"})
        with pytest.raises(PreconditionFailed, match="cannot be frozen"):
            conn.channel().queue_bind("args-q", "args", "", arguments={"k": object.__new__(_Unhashable)})


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]
