"""Details where a Kombu program must behave the same on kelp: each scenario runs under real Kombu and
under kelp (both on their in-memory brokers) and the observable results are compared."""

from __future__ import annotations

import importlib
import uuid
from types import ModuleType
from typing import Any

import kombu
import pytest

import kelp

LIBRARIES = [pytest.param(kombu, id="kombu"), pytest.param(kelp, id="kelp")]


def _url() -> str:
    return f"memory://{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("library", LIBRARIES)
def test_autoretry_passes_the_channel_and_returns_it(library: ModuleType) -> None:
    calls: list[tuple[Any, ...]] = []

    def fun(a: int, b: int = 0, channel: Any = None) -> int:
        calls.append((a, b, channel is not None))
        return a + b

    with library.Connection(_url()) as conn:
        given = conn.channel()
        result, channel = conn.autoretry(fun, given)(1, b=2)
        assert (result, channel is given) == (3, True)
        result, channel = conn.autoretry(fun)(4)
        assert result == 4
        assert channel is not None
    assert calls == [(1, 2, True), (4, 0, True)]


@pytest.mark.parametrize("library", LIBRARIES)
def test_acking_a_message_received_without_acks_does_nothing(library: ModuleType) -> None:
    with library.Connection(_url()) as conn:
        buffer = conn.SimpleBuffer("details")
        buffer.put({"n": 1})
        message = buffer.get(timeout=1)
        message.ack()  # no_ack delivery: nothing to acknowledge, and no error
        assert message.payload == {"n": 1}
        buffer.close()


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_no_declare_queue_is_not_declared_by_a_consumer(library: ModuleType) -> None:
    name = f"nd-{uuid.uuid4().hex[:8]}"
    with library.Connection(_url()) as conn:
        exchange = library.Exchange(f"{name}-x", "direct", no_declare=True)
        queue = library.Queue(name, exchange, routing_key="k", no_declare=True)
        library.Consumer(conn, [queue]).declare()
        with pytest.raises(conn.channel_errors):
            conn.channel().queue_declare(name, passive=True)
        with pytest.raises(conn.channel_errors):
            conn.channel().exchange_declare(f"{name}-x", "direct", passive=True)


@pytest.mark.parametrize("library", LIBRARIES)
def test_entities_take_none_names_and_ignore_unknown_arguments(library: ModuleType) -> None:
    assert library.Exchange(None).name == ""
    assert library.Queue(None).name == ""
    assert library.Exchange("x", "topic", no_such_option=1).type == "topic"
    assert library.Queue("q", no_such_option=1).name == "q"


def _declarations(library: ModuleType) -> tuple[Any, Any, Any]:
    exchange = library.Exchange("x", "topic", durable=False)
    primary = library.Queue("q1", exchange, routing_key="a.*", max_priority=5)
    # A queue given bindings is bound by those only: the exchange argument is dropped.
    bound = library.Queue("q2", exchange, routing_key="a.*", bindings=[library.binding(exchange, "b.#")])
    return exchange, primary, bound


def _plain(value: Any) -> Any:
    """Nested as_dict output with sets made lists and empty argument tables None (kelp keeps ``{}`` where
    Kombu keeps None: the same declaration either way)."""
    if value == {}:
        return None
    if isinstance(value, dict):
        return {key: _plain(each) for key, each in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(each) for each in value]
    return value


def test_as_dict_matches_kombu() -> None:
    mine, reference = _declarations(kelp), _declarations(kombu)
    for ours, theirs in zip(mine, reference):
        expected = _plain(theirs.as_dict(recurse=True))
        if isinstance(theirs, kombu.Queue):  # Kombu's Queue says None for a no_declare never given
            expected["no_declare"] = bool(expected["no_declare"])
        assert _plain(ours.as_dict(recurse=True)) == expected
        assert sorted(ours.as_dict()) == sorted(theirs.as_dict())
    assert isinstance(mine[1].as_dict()["exchange"], kelp.Exchange)
    assert mine[2].exchange is None


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_producer_pool_limit_can_be_assigned(library: ModuleType) -> None:
    with library.Connection(_url()) as conn:
        pools = importlib.import_module(f"{library.__name__}.pools")
        producers = pools.ProducerPool(conn.Pool(limit=3), limit=1)
        producers.limit = 3
        taken = [producers.acquire() for _ in range(3)]
        assert producers.limit == 3
        for producer in taken:
            producer.release()


@pytest.mark.parametrize("library", LIBRARIES)
def test_publish_accepts_properties_amqp_does_not_have(library: ModuleType) -> None:
    with library.Connection(_url()) as conn:
        conn.default_channel.queue_declare("props")
        conn.Producer().publish({"n": 1}, routing_key="props", custom_thing="x", correlation_id="c1")
        message = library.Queue("props")(conn.default_channel).get()
        assert message.properties["correlation_id"] == "c1"
        assert message.payload == {"n": 1}
        message.ack()
