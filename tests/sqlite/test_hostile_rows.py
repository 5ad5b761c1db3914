"""Message rows written into the sqlite file from outside kelp (raw SQL): a malformed one leaves its queue
(dead-lettered with ``x-kelp-malformed``, or dropped with an ERROR log), the rest of its batch is
delivered, and every later operation on the file works."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelp import Connection, Exchange, Queue
from kelp._broker.malformed import MALFORMED_HEADER

pytestmark = pytest.mark.timeout(120)

PROPS = '{"content_type":"application/json","content_encoding":"utf-8","delivery_mode":2,"priority":0}'
_INSERT = (
    "INSERT INTO messages (queue, priority, body, properties, headers, exchange, routing_key, persistent, "
    "expires_at) VALUES (?, 0, ?, ?, ?, '', ?, 1, ?)"
)

# (properties, headers, routing key) a foreign writer may store; bytes are stored as TEXT without checks.
MALFORMED = {
    "properties not JSON": ("not json", "", None),
    "properties a list": ("[1, 2]", "", None),
    "headers not JSON": (PROPS, "{bad", None),
    "bad tagged date": (PROPS, '{"h":{"\\u0000kelp":"dt","v":"not a date"}}', None),
    "properties not UTF-8": (b"\xff\xfe{}", "", None),
    "headers not UTF-8": (PROPS, b'{"h":"\xc3\x28"}', None),
    "routing key not UTF-8": (PROPS, "", b"w\xffork"),
    "content_type not text": ('{"content_type":5,"delivery_mode":2}', "", None),
    "content_encoding a table": ('{"content_encoding":{"a":1},"delivery_mode":2}', "", None),
}


def _path(url: str) -> str:
    return url[len("sqlite:///") :]


def _setup(url: str, dlx: bool) -> None:
    with Connection(url) as conn:
        Queue("dead", Exchange("dlx", "fanout"))(conn.default_channel).declare()
        _work(dlx)(conn.default_channel).declare()


def _work(dlx: bool) -> Queue:
    return Queue("work", dead_letter_exchange="dlx" if dlx else None)


def _insert(
    url: str, body: bytes, props: Any, headers: Any, key: Any = None, expires: float | None = None
) -> None:
    db = sqlite3.connect(_path(url))
    cast = "CAST(? AS TEXT)"
    sql = _INSERT
    if isinstance(props, bytes):
        sql = sql.replace("?, ?, '',", f"{cast}, ?, '',", 1)
    if isinstance(headers, bytes):
        sql = sql.replace("?, '', ?", f"{cast}, '', ?", 1)
    if isinstance(key, bytes):
        sql = sql.replace("'', ?, 1", f"'', {cast}, 1", 1)
    db.execute(sql, ("work", body, props, headers, key if key is not None else "work", expires))
    db.commit()
    db.close()


def _good(url: str, body: str) -> None:
    _insert(url, f'"{body}"'.encode(), PROPS, "")


def _consume_all(conn: Connection, queue: Queue, expected: int) -> list[Any]:
    """Consume until ``expected`` messages or the one whose body is "after" arrived."""
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer([queue], callbacks=[on_message]):
        deadline = time.monotonic() + 5
        while len(got) < expected and "after" not in got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    return got


def _dead(conn: Connection) -> list[Any]:
    bound = Queue("dead")(conn.default_channel)
    return list(iter(lambda: bound.get(no_ack=True), None))


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_row_is_dead_lettered_and_its_batch_delivered(db_url: str, kind: str) -> None:
    _setup(db_url, dlx=True)
    props, headers, key = MALFORMED[kind]
    _good(db_url, "before")
    _insert(db_url, b"bad", props, headers, key)
    _good(db_url, "after")
    with Connection(db_url) as conn:
        assert _consume_all(conn, _work(True), 2) == ["before", "after"]
        [dead] = _dead(conn)
        assert dead.body == b"bad"
        assert dead.headers["x-death"][0]["reason"] == "rejected"
        assert dead.headers["x-death"][0]["queue"] == "work"
        assert "problem" in dead.headers[MALFORMED_HEADER]
        assert _work(True)(conn.default_channel).queue_declare(passive=True).message_count == 0


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_row_without_dead_letter_exchange_is_dropped_with_an_error_log(
    db_url: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    _setup(db_url, dlx=False)
    props, headers, key = MALFORMED[kind]
    _insert(db_url, b"bad", props, headers, key)
    _good(db_url, "after")
    with caplog.at_level(logging.ERROR, logger="kelp.broker"), Connection(db_url) as conn:
        bound = _work(False)(conn.default_channel)
        message = bound.get()
        assert message is not None
        assert message.payload == "after"
        message.ack()
        assert bound.get() is None
        assert _dead(conn) == []
    [record] = [r for r in caplog.records if r.name == "kelp.broker"]
    assert record.levelno == logging.ERROR
    assert "'work'" in record.getMessage()
    assert "malformed message 1 " in record.getMessage()


def test_an_expired_malformed_row_is_dead_lettered(db_url: str) -> None:
    _setup(db_url, dlx=True)
    _insert(db_url, b"bad", "not json", "", expires=time.time() - 1)
    _good(db_url, "after")
    with Connection(db_url) as conn:
        assert _consume_all(conn, _work(True), 1) == ["after"]
        [dead] = _dead(conn)
        assert dead.headers["x-death"][0]["reason"] == "expired"
        assert dead.headers[MALFORMED_HEADER]["properties"] == "not json"


def test_a_rejected_malformed_row_inserted_as_claimed_is_dead_lettered(db_url: str) -> None:
    # Rejecting reads the row again: kelp validated it at delivery, but it may be rewritten since.
    _setup(db_url, dlx=True)
    _good(db_url, "first")
    with Connection(db_url) as conn:
        message = _work(True)(conn.default_channel).get()
        assert message is not None
        db = sqlite3.connect(_path(db_url))
        db.execute("UPDATE messages SET properties='garbage' WHERE queue='work'")
        db.commit()
        db.close()
        message.reject(requeue=False)
        [dead] = _dead(conn)
        assert dead.headers[MALFORMED_HEADER]["properties"] == "garbage"


stored_text = st.text(max_size=30) | st.binary(max_size=30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(props=stored_text, headers=stored_text | st.just(""), body=st.binary(max_size=20))
def test_any_foreign_row_never_stops_the_queue(tmp_path: Path, props: Any, headers: Any, body: bytes) -> None:
    url = f"sqlite:///{tmp_path}/hyp-{time.monotonic_ns()}.db"
    _setup(url, dlx=True)
    _insert(url, body, props, headers)
    _good(url, "after")
    with Connection(url) as conn:
        got = _consume_all(conn, _work(True), 2)
        assert got[-1] == "after"
        assert len(got) + len(_dead(conn)) == 2
        assert _work(True)(conn.default_channel).queue_declare(passive=True).message_count == 0
