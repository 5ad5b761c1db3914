"""Serialization: JSON by default, raw bytes, compression, and an accept list that keeps pickle out.
A refused payload is never deserialized: a pickle that would create a directory proves it."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from kelp.aio import Connection, Queue
from kelp.exceptions import ContentDisallowed

from .helpers import Names, consuming, declared, drain_for, drain_until, fetch

UNICODE = {"greeting": "héllo wörld", "cjk": "世界", "emoji": "🎉🐍", "escapes": 'tab\tnl\n"q"\\'}


class _Trap:
    """Pickles as a call to ``os.mkdir(path)``: unpickling it has a visible side effect."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.path,))


async def test_json_is_the_default(broker_url: str, names: Names) -> None:
    payload = {"int": 1, "float": 2.5, "list": [1, "a", None, True], "nested": {"deep": {"er": []}}}
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish(payload, routing_key=bq.name)
        [message] = await fetch(bq, 1)
        assert message.content_type == "application/json"
        assert message.properties["content_type"] == "application/json"
        assert message.properties["content_encoding"] == "utf-8"
        assert isinstance(message.body, bytes)
        assert json.loads(message.body) == payload
        assert message.payload == payload
        assert message.decode() == payload


async def test_unicode_round_trips(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer()
        await producer.publish(UNICODE, routing_key=bq.name)
        await producer.publish("just a str: ünïcödé ✓", routing_key=bq.name)
        messages = await fetch(bq, 2)
        assert messages[0].payload == UNICODE
        assert messages[1].payload == "just a str: ünïcödé ✓"


async def test_raw_bytes_pass_through_unchanged(broker_url: str, names: Names) -> None:
    raw = bytes(range(256)) + b"\x00\xff not utf-8 \xc3"
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish(
                raw, routing_key=q.name, content_type="application/data", content_encoding="binary"
            )
            assert await inbox.wait(conn, 1)
            message = inbox.messages[0]
            assert message.body == raw
            assert inbox.bodies == [raw]
            assert message.content_type == "application/data"
            await message.ack()


@pytest.mark.parametrize("compression", ["zlib", "bzip2"])
async def test_compression_round_trips(broker_url: str, names: Names, compression: Any) -> None:
    payload = {"text": "compress me " * 200, "unicode": UNICODE}
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            await conn.Producer().publish(payload, routing_key=q.name, compression=compression)
            assert await inbox.wait(conn, 1)
            message = inbox.messages[0]
            assert inbox.bodies == [payload]
            assert message.payload == payload
            assert json.loads(message.body) == payload  # .body is after decompression
            await message.ack()


async def test_producer_level_compression_and_serializer(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        producer = conn.Producer(serializer="json", compression="zlib")
        await producer.publish(["a", "b"] * 100, routing_key=bq.name)
        [message] = await fetch(bq, 1)
        assert message.payload == ["a", "b"] * 100


async def test_pickle_refused_by_default_reaches_on_decode_error_without_running(
    broker_url: str, names: Names, tmp_path: Any
) -> None:
    marker = tmp_path / "pickle-ran"
    errors = []
    called = []
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        consumer = conn.Consumer(
            [q],
            callbacks=[lambda body, message: called.append(body)],
            on_decode_error=lambda message, exc: errors.append((message, exc)),
        )
        async with consumer:
            await conn.Producer().publish(_Trap(str(marker)), routing_key=q.name, serializer="pickle")
            assert await drain_until(conn, lambda: bool(errors or called))
            await drain_for(conn, 0.05)
        assert not marker.exists(), "a refused pickle payload was deserialized"
        assert called == []
        assert len(errors) == 1
        message, exc = errors[0]
        assert isinstance(exc, ContentDisallowed)
        assert message.content_type == "application/x-python-serialize"


async def test_pickle_not_in_accept_raises_from_payload_without_running(
    broker_url: str, names: Names, tmp_path: Any
) -> None:
    marker = tmp_path / "pickle-ran"
    seen: list[Any] = []
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        consumer = conn.Consumer([q], on_message=seen.append, accept=["json"])
        async with consumer:
            await conn.Producer().publish(_Trap(str(marker)), routing_key=q.name, serializer="pickle")
            assert await drain_until(conn, lambda: bool(seen))
            message = seen[0]
            with pytest.raises(ContentDisallowed):
                message.decode()
            with pytest.raises(ContentDisallowed):
                message.payload  # noqa: B018 - the property access is the test
            assert isinstance(message.body, bytes)  # the raw body is still there to inspect
            await message.reject(requeue=False)
        assert not marker.exists(), "a refused pickle payload was deserialized"


async def test_pickle_refused_on_get_without_running(broker_url: str, names: Names, tmp_path: Any) -> None:
    marker = tmp_path / "pickle-ran"
    async with Connection(broker_url) as conn:
        bq = await declared(conn, Queue(names("q")))
        await conn.Producer().publish(_Trap(str(marker)), routing_key=bq.name, serializer="pickle")
        [message] = await fetch(bq, 1)
        with pytest.raises(ContentDisallowed):
            message.payload  # noqa: B018 - the property access is the test
        assert not marker.exists(), "a refused pickle payload was deserialized"


async def test_pickle_accepted_when_listed(broker_url: str, names: Names) -> None:
    payload = {"set": {1, 2, 3}, "tuple": (1, "two"), "bytes": b"\x00\x01"}
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q], accept=["pickle", "json"]) as inbox:
            await conn.Producer().publish(payload, routing_key=q.name, serializer="pickle")
            await conn.Producer().publish({"plain": "json"}, routing_key=q.name)
            assert await inbox.wait(conn, 2)
            assert inbox.bodies == [payload, {"plain": "json"}]
            assert inbox.messages[0].content_type == "application/x-python-serialize"
            for message in inbox.messages:
                await message.ack()


async def test_json_consumer_with_explicit_accept(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q], accept=["application/json"]) as inbox:
            await conn.Producer().publish({"ok": True}, routing_key=q.name)
            assert await inbox.wait(conn, 1)
            assert inbox.bodies == [{"ok": True}]
            await inbox.messages[0].ack()
