"""Message rows written into a postgresql:// broker's tables from outside kelp (raw SQL): a malformed one
leaves its queue (dead-lettered with ``x-kelp-malformed``, or dropped with an ERROR log), the rest of its
batch is delivered, and every later operation works. PostgreSQL enforces the column types and NOT NULLs,
so what a foreign writer can get wrong is the JSON text (properties, headers), the priority, and the
timestamps (expires_at, a delayed row's due time)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelp import Connection, Exchange, Queue
from kelp._broker.malformed import MALFORMED_HEADER
from kelp._broker.postgres._store import PostgresStore
from kelp.exceptions import InconsistencyError, MessageNacked

pytestmark = pytest.mark.timeout(120)

PROPS = '{"content_type":"application/json","content_encoding":"utf-8","delivery_mode":2,"priority":0}'

# (properties, headers, priority) a foreign writer may store in a queue without x-max-priority.
MALFORMED = {
    "properties not JSON": ("not json", "", 0),
    "properties a list": ("[1, 2]", "", 0),
    "properties null": ("null", "", 0),
    "content type not text": ('{"content_type":5}', "", 0),
    "content encoding not text": ('{"content_type":"application/json","content_encoding":[1]}', "", 0),
    "headers not JSON": (PROPS, "{bad", 0),
    "headers a string": (PROPS, '"x"', 0),
    "bad tagged date": (PROPS, '{"h":{"\\u0000kelp":"dt","v":"not a date"}}', 0),
    "tagged value missing": (PROPS, '{"h":{"\\u0000kelp":"b","w":"AA=="}}', 0),
    "priority above the range": (PROPS, "", 7),
    "negative priority": (PROPS, "", -1),
}


def _split(url: str) -> tuple[str, str]:
    base, _, query = url.partition("?schema=")
    return base, query


def _sql(url: str, text: str, *params: Any) -> None:
    base, schema = _split(url)
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(text.replace("{s}", schema), params)


def _insert(
    url: str,
    body: bytes,
    props: str,
    headers: str,
    priority: int = 0,
    expires: float | str | None = None,
    queue: str = "work",
) -> None:
    _sql(
        url,
        "INSERT INTO {s}.messages (queue, priority, body, properties, headers, exchange, routing_key, "
        "persistent, size, expires_at) VALUES (%s, %s, %s, %s, %s, '', %s, true, %s, %s::float8)",
        queue,
        priority,
        body,
        props,
        headers,
        queue,
        len(body),
        expires,
    )


def _work(dlx: bool, **arguments: Any) -> Queue:
    return Queue("work", dead_letter_exchange="dlx" if dlx else None, queue_arguments=arguments or None)


def _setup(conn: Connection, dlx: bool, **arguments: Any) -> None:
    Queue("dead", Exchange("dlx", "fanout"))(conn.default_channel).declare()
    _work(dlx, **arguments)(conn.default_channel).declare()


def _publish(conn: Connection, body: str, **kwargs: Any) -> None:
    conn.Producer().publish(body, routing_key="work", serializer="json", **kwargs)


def _consume_all(conn: Connection, queue: Queue, expected: int, no_ack: bool = False) -> list[Any]:
    """Consume until ``expected`` messages or the one whose body is "after" arrived."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        if not no_ack:
            message.ack()

    with conn.Consumer([queue], callbacks=[on_message], no_ack=no_ack):
        deadline = time.monotonic() + 5
        while len(got) < expected and "after" not in got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got


def _dead(conn: Connection, expected: int = 1) -> list[Any]:
    bound = Queue("dead")(conn.default_channel)
    found: list[Any] = []
    deadline = time.monotonic() + 3
    while len(found) < expected and time.monotonic() < deadline:
        message = bound.get(no_ack=True)
        if message is None:
            time.sleep(0.05)
        else:
            found.append(message)
    return found


def _count(conn: Connection, queue: Queue) -> int:
    return int(queue(conn.default_channel).queue_declare(passive=True).message_count)


def _dropped(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kelp.broker" and "malformed" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_row_is_dead_lettered_and_its_batch_delivered(pg_url: str, kind: str) -> None:
    props, headers, priority = MALFORMED[kind]
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True)
        _publish(conn, "before")
        _insert(pg_url, b"bad", props, headers, priority)
        _publish(conn, "after")
        assert _consume_all(conn, _work(True), 2) == ["before", "after"]
        [dead] = _dead(conn)
        assert dead.body == b"bad"
        assert dead.properties.get("content_type") is None
        assert dead.headers["x-death"][0]["reason"] == "rejected"
        assert dead.headers["x-death"][0]["queue"] == "work"
        record = dead.headers[MALFORMED_HEADER]
        assert record["problem"]
        if priority:
            assert record["priority"] == str(priority)
        else:
            assert (record["properties"], record["headers"]) == (props, headers)
        assert _count(conn, _work(True)) == 0
        # Later operations work: a publish is consumed as usual.
        _publish(conn, "later")
        assert _consume_all(conn, _work(True), 1) == ["later"]


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_row_without_dead_letter_exchange_is_dropped_with_an_error_log(
    pg_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    props, headers, priority = MALFORMED[kind]
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(pg_url) as conn:
        _setup(conn, dlx=False)
        _insert(pg_url, b"bad", props, headers, priority)
        _publish(conn, "after")
        bound = _work(False)(conn.default_channel)
        message = bound.get()
        assert message is not None
        assert message.payload == "after"
        message.ack()
        assert bound.get() is None
        assert _dead(conn, 0) == []
    [record] = _dropped(caplog)
    assert record.levelno == logging.ERROR
    assert "'work'" in record.getMessage()
    assert "malformed message 1 " in record.getMessage()
    assert "postgresql" in record.getMessage()


def test_a_malformed_row_is_dropped_from_a_consumer_s_batch_without_dead_letter_exchange(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(pg_url) as conn:
        _setup(conn, dlx=False)
        _publish(conn, "good1")
        _insert(pg_url, b"bad", "not json", "")
        _publish(conn, "after")
        assert _consume_all(conn, _work(False), 2) == ["good1", "after"]
        assert _count(conn, _work(False)) == 0
    assert len(_dropped(caplog)) == 1


def test_a_malformed_row_claimed_by_a_no_ack_consumer_is_dead_lettered(pg_url: str) -> None:
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True)
        _publish(conn, "before")
        _insert(pg_url, b"bad", "[]", "")
        _publish(conn, "after")
        assert _consume_all(conn, _work(True), 2, no_ack=True) == ["before", "after"]
        [dead] = _dead(conn)
        assert dead.body == b"bad"
        assert dead.headers[MALFORMED_HEADER]["properties"] == "[]"


def test_priorities_outside_the_queue_s_range_are_malformed(pg_url: str) -> None:
    queue = _work(True, **{"x-max-priority": 5})
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True, **{"x-max-priority": 5})
        _insert(pg_url, b"high", PROPS, "", 9)
        _insert(pg_url, b"low", PROPS, "", -3)
        _insert(pg_url, b'"top"', PROPS, "", 5)  # in range: a message like any other
        _publish(conn, "after")
        assert _consume_all(conn, queue, 2) == ["top", "after"]
        dead = _dead(conn, 2)
        assert sorted(d.body for d in dead) == [b"high", b"low"]
        assert sorted(d.headers[MALFORMED_HEADER]["priority"] for d in dead) == ["-3", "9"]


def test_a_foreign_priority_in_a_queue_a_consumer_claims_from_leaves_it(pg_url: str) -> None:
    # A consumer of a queue without priorities claims above its floor, among priority 0 only: the
    # process's checks each second find the row with another priority.
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True)
        _publish(conn, "first")
        got: list[Any] = []

        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with conn.Consumer([_work(True)], callbacks=[on_message]):
            conn.drain_events(timeout=5)
            assert got == ["first"]
            _insert(pg_url, b"bad", PROPS, "", 3)
            [dead] = _dead(conn)
            assert dead.headers[MALFORMED_HEADER]["priority"] == "3"
            _publish(conn, "after")
            conn.drain_events(timeout=5)
        assert got == ["first", "after"]
        assert _count(conn, _work(True)) == 0


def test_a_row_claimed_by_an_owner_that_never_was_is_released(pg_url: str) -> None:
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True)
        _insert(pg_url, b'"claimed"', PROPS, "")
        _sql(pg_url, "UPDATE {s}.messages SET owner = 987654321")
        _publish(conn, "first")
        redelivered: list[bool] = []

        def on_message(body: Any, message: Any) -> None:
            redelivered.append(message.delivery_info["redelivered"])
            message.ack()

        with conn.Consumer([_work(True)], callbacks=[on_message]):
            deadline = time.monotonic() + 5
            while len(redelivered) < 2 and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)
        assert redelivered == [False, True]
        assert _count(conn, _work(True)) == 0


@pytest.mark.parametrize("dlx", [True, False])
def test_an_expired_malformed_row_leaves_its_queue(
    pg_url: str, dlx: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(pg_url) as conn:
        _setup(conn, dlx=dlx, **{"x-message-ttl": 60000})
        _insert(pg_url, b"bad", "not json", "", expires=time.time() - 1)
        _publish(conn, "after")
        assert _consume_all(conn, _work(dlx, **{"x-message-ttl": 60000}), 1) == ["after"]
        if dlx:
            [dead] = _dead(conn)
            assert dead.headers["x-death"][0]["reason"] == "expired"
            assert dead.headers[MALFORMED_HEADER]["properties"] == "not json"
        else:
            # Expiry is looked for at least once a second (each get gives it a chance).
            deadline = time.monotonic() + 3
            while not _dropped(caplog) and time.monotonic() < deadline:
                assert _work(dlx, **{"x-message-ttl": 60000})(conn.default_channel).get() is None
                time.sleep(0.1)
    assert len(_dropped(caplog)) == (0 if dlx else 1)


def test_a_malformed_head_dropped_by_a_length_limit_is_dead_lettered(pg_url: str) -> None:
    queue = _work(True, **{"x-max-length": 1})
    with Connection(pg_url) as conn:
        _setup(conn, dlx=True, **{"x-max-length": 1})
        _insert(pg_url, b"bad", "{bad", "")
        _publish(conn, "after")
        [dead] = _dead(conn)
        assert dead.headers["x-death"][0]["reason"] == "maxlen"
        assert dead.headers[MALFORMED_HEADER]["properties"] == "{bad"
        assert _consume_all(conn, queue, 1) == ["after"]


@pytest.mark.parametrize("dlx", [True, False])
def test_a_rejected_malformed_row_is_dead_lettered_or_dropped(
    pg_url: str, dlx: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Rejecting reads the row again: kelp read it at delivery, but it may be rewritten since.
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(pg_url) as conn:
        _setup(conn, dlx=dlx)
        _publish(conn, "first")
        message = _work(dlx)(conn.default_channel).get()
        assert message is not None
        _sql(pg_url, "UPDATE {s}.messages SET properties = 'garbage' WHERE queue = 'work'")
        message.reject(requeue=False)
        if dlx:
            [dead] = _dead(conn)
            assert dead.headers[MALFORMED_HEADER]["properties"] == "garbage"
        _publish(conn, "after")
        assert _consume_all(conn, _work(dlx), 1) == ["after"]
    assert len(_dropped(caplog)) == (0 if dlx else 1)


def test_a_malformed_delayed_row_is_dropped_when_due(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(pg_url) as conn:
        _setup(conn, dlx=True)
        _sql(
            pg_url,
            "INSERT INTO {s}.delayed (due, queue, message_id, body, properties, headers, exchange, "
            "routing_key, ttl_ms, persistent) VALUES (%s, 'work', 'm1', 'bad', 'not json', '', '', 'work', "
            "NULL, true)",
            time.time() - 1,
        )
        _publish(conn, "after", countdown=0.2)
        _publish(conn, "first")
        assert _consume_all(conn, _work(True), 2) == ["first", "after"]
    [record] = _dropped(caplog)
    assert "delayed" in record.getMessage()


def test_an_infinite_expiry_never_stops_a_waiting_consumer(pg_url: str) -> None:
    with Connection(pg_url) as conn:
        _setup(conn, dlx=False)
        Queue("other")(conn.default_channel).declare()
        _insert(pg_url, b"forever", PROPS, "", expires="Infinity", queue="other")
        got: list[Any] = []

        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        def publish_later() -> None:
            time.sleep(0.5)
            with Connection(pg_url) as other:
                _publish(other, "after")

        publisher = threading.Thread(target=publish_later)
        with conn.Consumer([_work(False)], callbacks=[on_message]):
            publisher.start()
            try:
                conn.drain_events()  # no timeout: waits for the next deadline, or a message
            finally:
                publisher.join()
        assert got == ["after"]
        assert _count(conn, Queue("other")) == 1


def test_a_nan_expiry_does_not_make_waiting_consumers_spin(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    deadline = PostgresStore._deadline

    def counted(self: PostgresStore, queues: Any) -> Any:
        nonlocal calls
        calls += 1
        return deadline(self, queues)

    with Connection(pg_url) as conn:
        _setup(conn, dlx=False)
        Queue("other")(conn.default_channel).declare()
        _insert(pg_url, b"never", PROPS, "", expires="NaN", queue="other")
        monkeypatch.setattr(PostgresStore, "_deadline", counted)
        with conn.Consumer([_work(False)], callbacks=[]), pytest.raises(TimeoutError):
            conn.drain_events(timeout=1.0)
    assert calls < 20


_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)
_stored = _text | st.sampled_from(['{"a":[1,{"\\u0000kelp":"dec","v":"x"}]}', '{"\\u0000kelp":"b"}', "{}"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(props=_stored, headers=_stored | st.just(""), body=st.binary(max_size=20))
def test_any_foreign_row_never_stops_the_queue(pg_base: str, props: str, headers: str, body: bytes) -> None:
    url = f"{pg_base}?schema=kelp_h{uuid.uuid4().hex[:12]}"
    with Connection(url) as conn:
        _setup(conn, dlx=True)
        _insert(url, body, props, headers)
        _publish(conn, "after")
        got = _consume_all(conn, _work(True), 2)
        assert got[-1] == "after"
        assert len(got) + len(_dead(conn, 2 - len(got))) == 2
        assert _count(conn, _work(True)) == 0


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("exchanges", "UPDATE {s}.exchanges SET arguments = 'not json' WHERE name = 'ex'"),
        ("queues", "UPDATE {s}.queues SET arguments = '[1, 2]' WHERE name = 'work'"),
        ("bindings", "UPDATE {s}.bindings SET arguments = '{{bad' WHERE source = 'ex'"),
        ("bindings", "UPDATE {s}.bindings SET kind = 'neither' WHERE source = 'ex'"),
    ],
)
def test_a_declaration_row_kelp_did_not_write_is_one_clear_error_and_loses_nothing(
    pg_url: str, table: str, change: str
) -> None:
    with Connection(pg_url) as conn:
        Queue("work", Exchange("ex", "direct"), routing_key="k")(conn.default_channel).declare()
        conn.Producer().publish("kept", exchange="ex", routing_key="k")
    schema = _split(pg_url)[1]
    _sql(pg_url, change.format(s=schema))
    _sql(pg_url, f"UPDATE {schema}.meta SET value = value + 1 WHERE key = 'topology'")
    with Connection(pg_url) as conn:
        with pytest.raises(InconsistencyError, match=table):
            Queue("other")(conn.default_channel).declare()
        # a publish routed on the snapshot of before is refused, never dropped: the caller has it back
        conn.Producer().publish("refused", exchange="ex", routing_key="k")
        with pytest.raises(MessageNacked, match=table) as refused:
            conn.transport.flush(None)
        assert [e.body for e in refused.value.envelopes] == [b"refused"]
    # Repaired by hand, the broker works again and the message stored before is there.
    _sql(pg_url, f"UPDATE {schema}.exchanges SET arguments = '{{}}' WHERE name = 'ex'")
    _sql(pg_url, f"UPDATE {schema}.queues SET arguments = '{{}}' WHERE name = 'work'")
    _sql(pg_url, f"UPDATE {schema}.bindings SET arguments = '{{}}', kind = 'queue' WHERE source = 'ex'")
    _sql(pg_url, f"UPDATE {schema}.meta SET value = value + 1 WHERE key = 'topology'")
    with Connection(pg_url) as conn:
        message = Queue("work")(conn.default_channel).get(no_ack=True)
        assert message is not None
        assert message.payload == "kept"
