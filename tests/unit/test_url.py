from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp.exceptions import InvalidURL
from kelp.url import URL, parse_failover, parse_url


def test_amqp_full() -> None:
    url = parse_url("amqp://guest:guest@localhost:5672//")
    assert url == URL("amqp", "localhost", 5672, "guest", "guest", "/", {}, "/")
    assert url.virtual_host == "/"
    assert url.as_uri() == "amqp://guest:**@localhost:5672//"
    assert url.as_uri(include_password=True) == "amqp://guest:guest@localhost:5672//"


@pytest.mark.parametrize(
    ("text", "vhost", "path"),
    [
        ("amqp://h", "/", None),
        ("amqp://h/", "/", ""),
        ("amqp://h//", "/", "/"),
        ("amqp://h/%2F", "/", "/"),
        ("amqp://h/prod", "prod", "prod"),
        ("amqp://h/a%2Fb", "a/b", "a/b"),
        ("amqp://h/with%20space", "with space", "with space"),
    ],
)
def test_amqp_virtual_host(text: str, vhost: str, path: str | None) -> None:
    url = parse_url(text)
    assert url.virtual_host == vhost
    assert url.path == path


def test_defaults_and_aliases() -> None:
    assert parse_url("amqp://h").port == 5672
    assert parse_url("amqps://h").port == 5671
    assert parse_url("redis://h").port == 6379
    assert parse_url("rediss://h").port == 6380
    assert parse_url("amqp://h:1234").port == 1234
    assert parse_url("amqp://h:").port == 5672
    assert parse_url("memory://").port is None
    assert parse_url("sqlite:///x.db").port is None
    assert parse_url("pyamqp://h").transport == "amqp"
    assert parse_url("librabbitmq://h").transport == "amqp"
    assert parse_url("AMQP://h").transport == "amqp"
    assert parse_url("amqp://").hostname is None


def test_userinfo_decoding() -> None:
    url = parse_url("amqp://us%3Aer:p%40ss%2Fw%3Bord@host/")
    assert (url.userid, url.password) == ("us:er", "p@ss/w;ord")
    assert parse_url("amqp://user@host").password is None
    assert parse_url("amqp://user:@host").password is None
    assert parse_url("amqp://:secret@host").userid is None
    assert parse_url("amqp://:secret@host").password == "secret"
    assert parse_url("amqp://a@b:c@host").userid == "a@b"  # the last "@" ends the userinfo


def test_ipv6() -> None:
    url = parse_url("amqp://user:pw@[::1]:5673/v")
    assert (url.hostname, url.port) == ("::1", 5673)
    assert url.as_uri() == "amqp://user:**@[::1]:5673/v"
    assert parse_url("redis://[fe80::1%25eth0]").hostname == "fe80::1%eth0"
    assert parse_url(url.as_uri(include_password=True)) == url


def test_sqlite_paths() -> None:
    relative = parse_url("sqlite:///relative/path.db")
    assert (relative.hostname, relative.path) == (None, "relative/path.db")
    absolute = parse_url("sqlite:////abs/path.db")
    assert (absolute.hostname, absolute.path) == (None, "/abs/path.db")
    assert absolute.as_uri() == "sqlite:////abs/path.db"
    assert parse_url("sqlite:///:memory:").path == ":memory:"
    assert parse_url("sqlite:///my%20queue.db").path == "my queue.db"


def test_memory() -> None:
    default = parse_url("memory://")
    assert (default.transport, default.hostname, default.path, default.port) == ("memory", None, None, None)
    assert default.as_uri() == "memory://"
    named = parse_url("memory://tests")
    assert named.hostname == "tests"
    assert named.as_uri() == "memory://tests"


def test_redis_db_and_query() -> None:
    url = parse_url("redis://:pw@cache:6380/3?socket_timeout=5&ssl_cert_reqs=&a=1&a=2")
    assert url.virtual_host == "3"
    assert url.password == "pw"
    assert dict(url.query) == {"socket_timeout": "5", "ssl_cert_reqs": "", "a": "2"}
    assert parse_url(url.as_uri(include_password=True)) == url


def test_unknown_schemes_parse() -> None:
    url = parse_url("redis+socket:///tmp/redis.sock")
    assert url.transport == "redis+socket"
    assert url.path == "tmp/redis.sock"
    assert parse_url("sqla+sqlite:///x.db").transport == "sqla+sqlite"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost:5672", "no scheme"),
        ("://host", "no scheme"),
        ("1amqp://host", "invalid scheme"),
        ("am_qp://host", "invalid scheme"),
        ("amqp://host:port", "invalid port"),
        ("amqp://host:99999", "invalid port"),
        ("amqp://host:-1", "invalid port"),
        ("amqp://host:\uff11\uff12", "invalid port"),  # FULLWIDTH digits: str.isdigit() says yes
        ("amqp://[::1", "unclosed"),
        ("amqp://[not-v6]", "invalid IPv6"),
        ("amqp://[::1]x", "after the IPv6"),
        ("amqp://ho]st", "bracket"),
        ("amqp://::1/", "invalid port"),
        ("amqp://host name/", "not allowed"),
        ("amqp://host/v#frag", "not allowed"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidURL, match=message):
        parse_url(text)


@pytest.mark.parametrize(
    "text",
    ["amqp://user:abc123/x9z@localhost:5672//", "amqp://user:s3c?r3t@host/", "redis://:p4q/zz9@host:6379/0"],
)
def test_unencoded_slash_or_question_mark_in_the_password_is_not_echoed(text: str) -> None:
    with pytest.raises(InvalidURL, match="must be percent-encoded") as info:
        parse_url(text)
    secret = text.split(":")[2].split("@")[0]
    for part in re.split(r"[/?]", secret):
        assert part not in str(info.value).replace("percent-encoded", "")


def test_invalid_url_masks_the_password() -> None:
    with pytest.raises(InvalidURL) as info:
        parse_url("amqp://user:s3cr3t@host:bad/")
    assert "s3cr3t" not in str(info.value)
    assert "user:**@host:bad" in str(info.value)
    with pytest.raises(InvalidURL) as info:
        parse_url("amqp://user:s3#cr3t@host/")
    assert "s3" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_a_string() -> None:
    with pytest.raises(InvalidURL):
        parse_url(b"amqp://h")  # type: ignore[arg-type]


def test_surrounding_whitespace_is_ignored() -> None:
    assert parse_url("  amqp://h/\n") == parse_url("amqp://h/")


def test_url_value_object() -> None:
    url = parse_url("amqp://u:secret@h/?x=1")
    assert hash(url) == hash(parse_url("amqp://u:secret@h/?x=1"))
    assert {url: 1}[parse_url("amqp://u:secret@h/?x=1")] == 1
    assert "secret" not in repr(url)
    assert "secret" not in str(url)
    with pytest.raises(dataclasses.FrozenInstanceError):
        url.hostname = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        url.query["y"] = "2"  # type: ignore[index]
    built = URL("amqp", "h", 5672, query={"x": "1"})
    assert hash(built) == hash(URL("amqp", "h", 5672, query={"x": "1"}))
    assert built.query == {"x": "1"}


def test_hand_built_url_with_vhost_only() -> None:
    url = URL("amqp", "h", 5672, virtual_host="prod")
    assert url.as_uri() == "amqp://h:5672/prod"
    assert parse_url(url.as_uri()).virtual_host == "prod"


def test_failover() -> None:
    urls = parse_failover("amqp://a;amqp://b:5673/ ; ;redis://c")
    assert [(u.transport, u.hostname, u.port) for u in urls] == [
        ("amqp", "a", 5672),
        ("amqp", "b", 5673),
        ("redis", "c", 6379),
    ]
    assert parse_failover(["amqp://a", "amqp://b;amqp://c"]) == [
        parse_url("amqp://a"),
        parse_url("amqp://b"),
        parse_url("amqp://c"),
    ]
    assert parse_failover(("memory://",)) == [parse_url("memory://")]
    with pytest.raises(InvalidURL, match="no URL"):
        parse_failover(" ; ")
    with pytest.raises(InvalidURL, match="no URL"):
        parse_failover([])


# --- round trips ---------------------------------------------------------------------------------------

any_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
hosts = st.one_of(
    st.none(),
    st.from_regex(r"[a-z][a-z0-9.\-]{0,15}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(
    transport=st.sampled_from(["amqp", "amqps", "redis", "rediss", "memory", "sqlite", "x+y"]),
    hostname=hosts,
    port=st.none() | st.integers(0, 65535),
    userid=st.none() | any_text.filter(bool),
    password=st.none() | any_text.filter(bool),
    path=st.none() | any_text,
    query=st.dictionaries(any_text, any_text, max_size=3),
)
def test_round_trip(
    transport: str,
    hostname: str | None,
    port: int | None,
    userid: str | None,
    password: str | None,
    path: str | None,
    query: dict[str, str],
) -> None:
    text = URL(transport, hostname, port, userid, password, None, query, path).as_uri(include_password=True)
    url = parse_url(text)
    assert url.hostname == hostname
    assert url.userid == userid
    assert url.password == password
    assert url.path == path
    assert url.query == query
    assert url.port == (port if port is not None else {"amqp": 5672, "amqps": 5671}.get(transport, url.port))
    assert parse_url(url.as_uri(include_password=True)) == url
    if password is not None:
        assert ":**@" in url.as_uri()
