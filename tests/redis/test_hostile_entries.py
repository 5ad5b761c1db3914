"""Entries written into a redis:// broker's keys from outside kelp (raw XADD): a malformed one leaves its
queue (dead-lettered with ``x-kelp-malformed``, or dropped with an ERROR log), the rest of its batch is
delivered, the queue's counters stay right, and no connection on the prefix breaks."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kelp_redis_kit import LIVENESS, with_options

from kelp import Connection, Exchange, Queue
from kelp._broker.malformed import MALFORMED_HEADER

pytestmark = pytest.mark.timeout(120)

# Raw entry fields a foreign writer may add to a queue stream.
MALFORMED: dict[str, dict[str, bytes]] = {
    "no meta": {"b": b"bad"},
    "meta not JSON": {"b": b"bad", "m": b"not json"},
    "meta not a list": {"b": b"bad", "m": b'{"a": 1}'},
    "meta of the wrong shape": {"b": b"bad", "m": b'[[], {}, "", ""]'},
    "meta not UTF-8": {"b": b"bad", "m": b'[{}, {}, "\xff", ""]'},
    "content_type not text": {"b": b"bad", "m": b'[{"content_type": 5}, {}, "", "work"]'},
    "no body": {"m": b'[{}, {}, "", "work"]', "x": b"not a time"},
}


@pytest.fixture
def raw(redis_base: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_base)
    yield client
    client.close()


def _prefix(url: str) -> str:
    return parse_qs(urlsplit(url).query)["prefix"][0]


def _setup(url: str, dlx: bool) -> None:
    with Connection(url) as conn:
        Queue("dead", Exchange("dlx", "fanout"))(conn.default_channel).declare()
        _work(dlx)(conn.default_channel).declare()


def _work(dlx: bool) -> Queue:
    return Queue("work", dead_letter_exchange="dlx" if dlx else None)


def _publish(url: str, body: str) -> None:
    with Connection(url) as conn:
        conn.Producer().publish(body, routing_key="work", serializer="json")


def _consume(conn: Connection, queue: Queue, until: str) -> list[Any]:
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer([queue], callbacks=[on_message], prefetch_count=10):
        deadline = time.monotonic() + 5
        while until not in got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got


def _dead(conn: Connection) -> list[Any]:
    bound = Queue("dead")(conn.default_channel)
    got = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        message = bound.get(no_ack=True)
        if message is None:
            if got:
                break
            time.sleep(0.02)
            continue
        got.append(message)
    return got


def _ready(raw: redis.Redis, url: str) -> int:
    return int(raw.hget(f"{{{_prefix(url)}}}:q:work", "ready") or 0)


def _xadd(raw: redis.Redis, url: str, fields: dict[str, bytes]) -> bytes:
    entry_id: bytes = raw.xadd(f"{{{_prefix(url)}}}:qs:0:work", fields)  # type: ignore[arg-type,assignment]
    return entry_id


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_entry_is_dead_lettered_and_its_batch_delivered(
    redis_url: str, raw: redis.Redis, kind: str
) -> None:
    _setup(redis_url, dlx=True)
    _publish(redis_url, "before")
    _xadd(raw, redis_url, MALFORMED[kind])
    _publish(redis_url, "after")
    with Connection(redis_url) as conn:
        assert _consume(conn, _work(True), "after") == ["before", "after"]
        [dead] = _dead(conn)
        assert dead.body == MALFORMED[kind].get("b", b"")
        assert dead.headers["x-death"][0]["reason"] == "rejected"
        assert dead.headers["x-death"][0]["queue"] == "work"
        assert "problem" in dead.headers[MALFORMED_HEADER]
        assert _work(True)(conn.default_channel).queue_declare(passive=True).message_count == 0
    assert _ready(raw, redis_url) == 0


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_entry_without_dead_letter_exchange_is_dropped_with_an_error_log(
    redis_url: str, raw: redis.Redis, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _setup(redis_url, dlx=False)
    _publish(redis_url, "before")
    entry_id = _xadd(raw, redis_url, MALFORMED[kind])
    _publish(redis_url, "after")
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(redis_url) as conn:
        bound = _work(False)(conn.default_channel)
        for expected in ("before", "after"):
            message = bound.get()
            assert message is not None
            assert message.payload == expected
            message.ack()
        assert bound.get() is None
        assert bound.queue_declare(passive=True).message_count == 0
    [record] = [r for r in caplog.records if r.name == "kelp.broker"]
    assert record.levelno == logging.ERROR
    assert "'work'" in record.getMessage()
    assert entry_id.decode() in record.getMessage()
    assert _ready(raw, redis_url) == 0


def test_a_malformed_dead_letter_in_the_outbox_never_breaks_a_connection(
    redis_url: str, raw: redis.Redis
) -> None:
    _setup(redis_url, dlx=True)
    outbox = f"{{{_prefix(redis_url)}}}:outbox"
    raw.xadd(outbox, {"q": "work", "r": "rejected", "x": "dlx", "b": "bad", "m": "not json"})
    raw.xadd(outbox, {"q": "work"})  # nothing else
    with Connection(redis_url) as conn:  # connecting routes what waits in the outbox
        [dead] = _dead(conn)
        assert dead.body == b"bad"
        assert dead.headers[MALFORMED_HEADER]["meta"] == "not json"
        _publish(redis_url, "after")
        assert _consume(conn, _work(True), "after") == ["after"]
    assert raw.xlen(outbox) == 0


def test_a_message_with_a_malformed_x_death_never_breaks_the_heartbeat(redis_url: str) -> None:
    _setup(redis_url, dlx=True)
    with Connection(redis_url) as watcher:
        # Only the heartbeat thread of this idle connection is there to route the dead letter.
        with Connection(redis_url) as conn:
            conn.Producer().publish("bad", routing_key="work", headers={"x-death": 5}, expiration=0.01)
        time.sleep(0.5)
        [dead] = _dead(watcher)
        assert dead.headers["x-death-invalid"] == 5
        _publish(redis_url, "after")
        assert _consume(watcher, _work(True), "after") == ["after"]


entry_fields = st.fixed_dictionaries(
    {},
    optional={"b": st.binary(max_size=12), "m": st.binary(max_size=40), "x": st.binary(max_size=4)},
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=entry_fields, dlx=st.booleans())
def test_any_foreign_entry_never_stops_the_queue(
    redis_base: str, raw: redis.Redis, fields: dict[str, bytes], dlx: bool
) -> None:
    url = with_options(redis_base, prefix=uuid.uuid4().hex[:12], liveness=LIVENESS)
    _setup(url, dlx=dlx)
    _xadd(raw, url, fields or {"z": b""})
    _publish(url, "after")
    with Connection(url) as conn:
        got = _consume(conn, _work(dlx), "after")
        assert got[-1] == "after"
        assert _work(dlx)(conn.default_channel).queue_declare(passive=True).message_count == 0
    assert _ready(raw, url) == 0


def test_non_json_meta_sent_to_the_script_is_dead_lettered(redis_url: str, raw: redis.Redis) -> None:
    from kelp._broker.redis.script import SHA

    _setup(redis_url, dlx=True)
    # A foreign client calls the script's publish itself: exchange '', key 'work', meta not kelp's.
    raw.evalsha(
        SHA,
        1,
        f"{{{_prefix(redis_url)}}}:",
        "publish",
        1,
        "",
        "work",
        "",
        "",
        0,
        "",
        b"bad",
        b"{",
        "",
        "",
        "",
    )
    _publish(redis_url, "after")
    with Connection(redis_url) as conn:
        assert _consume(conn, _work(True), "after") == ["after"]
        [dead] = _dead(conn)
        assert dead.body == b"bad"
        assert dead.headers[MALFORMED_HEADER]["meta"] == "{"
