"""URL query options are applied or refused with a clear InvalidURL, never ignored or a bare ValueError."""

from __future__ import annotations

from typing import Any

import pytest

from kelp.exceptions import InvalidURL, UsageError
from kelp.transport.amqp import AmqpTransport
from kelp.transport.memory import MemoryTransport
from kelp.transport.redis import RedisTransport
from kelp.transport.sqlite import SqliteTransport
from kelp.url import parse_url


def amqp(url: str, **options: Any) -> AmqpTransport:
    return AmqpTransport(parse_url(url), options)


def test_amqp_query_options_are_applied() -> None:
    transport = amqp(
        "amqp://h/?reply_timeout=2.5&blocked_timeout=7&frame_max=8192&channel_max=16&heartbeat=3"
    )
    assert transport.reply_timeout == 2.5
    assert transport.blocked_timeout == 7.0
    assert transport._core.frame_max == 8192
    assert transport._core.channel_max == 16
    assert transport._core._want_heartbeat == 3


def test_amqp_transport_options_win_over_the_query() -> None:
    transport = amqp("amqp://h/?reply_timeout=2.5&frame_max=8192", reply_timeout=None, frame_max=4096)
    assert transport.reply_timeout is None
    assert transport._core.frame_max == 4096


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("reply_timeout=abc", "reply_timeout"),
        ("reply_timeout=-1", "reply_timeout"),
        ("blocked_timeout=nan", "blocked_timeout"),
        ("frame_max=1", "frame_max"),
        ("frame_max=big", "frame_max"),
        ("channel_max=0", "channel_max"),
        ("channel_max=70000", "channel_max"),
        ("heartbeat=soon", "heartbeat"),
        ("heartbeat=70000", "heartbeat"),
    ],
)
def test_amqp_bad_query_options_are_refused(query: str, name: str) -> None:
    with pytest.raises(InvalidURL, match=f"amqp:// option {name}="):
        amqp(f"amqp://user:secret@h/?{query}")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://localhost/?liveness=abc", "option liveness='abc' must be a number of seconds > 0"),
        ("redis://localhost/?liveness=0", "option liveness='0'"),
        ("redis://localhost/?socket_timeout=-1", "option socket_timeout='-1'"),
        ("redis://localhost/notanumber", "database (the URL's path)='notanumber' must be a whole number"),
        ("rediss://localhost/-3", "rediss:// option database"),
    ],
)
def test_redis_bad_options_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(InvalidURL) as info:
        RedisTransport(parse_url(url), {})
    assert fragment in str(info.value)


def test_redis_database_is_read_from_the_path() -> None:
    assert RedisTransport(parse_url("redis://localhost/5"), {})._db == 5


@pytest.mark.parametrize(
    ("query", "fragment"),
    [("busy_timeout=abc", "busy_timeout='abc'"), ("heartbeat=inf", "heartbeat='inf'")],
)
def test_sqlite_bad_options_are_refused(tmp_path: Any, query: str, fragment: str) -> None:
    with pytest.raises(InvalidURL, match=fragment):
        SqliteTransport(parse_url(f"sqlite:///{tmp_path}/x.db?{query}"), {})


def test_sqlite_memory_database_is_refused_clearly(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"sqlite:///:memory: is not supported.*memory://"):
        SqliteTransport(parse_url("sqlite:///:memory:"), {})
    assert list(tmp_path.iterdir()) == []  # no file named ':memory:'


@pytest.mark.parametrize(
    ("cls", "url", "unknown"),
    [
        (AmqpTransport, "amqp://h/?frame_mx=8192", "frame_mx"),
        (AmqpTransport, "amqps://h/?ssl=true&heartbeat=5", "ssl"),  # TLS is amqps:// or the ssl option
        (RedisTransport, "rediss://h/?ssl_cert_reqs=none", "ssl_cert_reqs"),
        (SqliteTransport, "sqlite:///x.db?journal=off", "journal"),
        (MemoryTransport, "memory://name?prefix=a", "prefix"),
    ],
)
def test_unknown_query_options_are_refused_not_ignored(cls: Any, url: str, unknown: str) -> None:
    with pytest.raises(InvalidURL, match=f"has no URL option {unknown} "):
        cls(parse_url(url), {})
