from __future__ import annotations

import pytest
from amqp_kit import drain, method, names, open_connection, parse, start, state_of

from kelp.amqp import (
    PROTOCOL_HEADER,
    Connection,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionState,
    LocalProtocolError,
    RemoteProtocolError,
    ReplyCode,
)


def test_scripted_handshake() -> None:
    conn = Connection("alice", "s3cret", "/prod", heartbeat=30, client_properties={"connection_name": "t"})
    assert conn.initiate() == PROTOCOL_HEADER
    assert conn.state is ConnectionState.AWAIT_START

    conn.receive_data(start(props={"product": "RabbitMQ", "capabilities": {"publisher_confirms": True}}))
    assert conn.next_event() is None
    [(channel, name, args)] = parse(conn.data_to_send())
    assert (channel, name) == (0, "connection.start-ok")
    client_properties, mechanism, response, locale = args
    assert mechanism == "PLAIN"
    assert response == b"\x00alice\x00s3cret"
    assert locale == "en_US"
    assert client_properties["product"] == "kelp"
    assert client_properties["connection_name"] == "t"
    assert client_properties["capabilities"]["publisher_confirms"] is True
    assert client_properties["capabilities"]["consumer_cancel_notify"] is True
    assert conn.data_to_send() == b""

    conn.receive_data(method(0, "connection.tune", 0, 131072, 60))
    assert parse(conn.data_to_send()) == [
        (0, "connection.tune-ok", (2047, 131072, 30)),
        (0, "connection.open", ("/prod", "", False)),
    ]
    assert state_of(conn) is ConnectionState.AWAIT_OPEN_OK

    conn.receive_data(method(0, "connection.open-ok", ""))
    assert drain(conn) == [
        ConnectionOpened(
            frame_max=131072,
            channel_max=2047,
            heartbeat=30,
            server_properties={"product": "RabbitMQ", "capabilities": {"publisher_confirms": True}},
        )
    ]
    assert conn.is_open
    assert conn.heartbeat_interval == 30


def test_handshake_fed_one_byte_at_a_time() -> None:
    conn = Connection()
    conn.initiate()
    stream = start() + method(0, "connection.tune", 2047, 131072, 60) + method(0, "connection.open-ok", "")
    out = b""
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        out += conn.data_to_send()
    assert names(out) == ["connection.start-ok", "connection.tune-ok", "connection.open"]
    assert isinstance(conn.next_event(), ConnectionOpened)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ((2047, 131072), (0, 0), (2047, 131072)),
        ((2047, 131072), (100, 8192), (100, 8192)),
        ((10, 4096), (2047, 131072), (10, 4096)),
    ],
)
def test_tune_negotiates_lower_nonzero(
    ours: tuple[int, int], theirs: tuple[int, int], expected: tuple[int, int]
) -> None:
    conn = Connection(channel_max=ours[0], frame_max=ours[1])
    conn.initiate()
    conn.receive_data(start())
    conn.data_to_send()
    conn.receive_data(method(0, "connection.tune", theirs[0], theirs[1], 0))
    tune_ok = parse(conn.data_to_send())[0]
    assert tune_ok[2][:2] == expected
    assert (conn.channel_max, conn.frame_max) == expected


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [(None, 60, 60), (None, 0, 0), (0, 60, 0), (30, 60, 30), (90, 60, 60), (30, 0, 30)],
)
def test_heartbeat_negotiation(ours: int | None, theirs: int, expected: int) -> None:
    conn = Connection(heartbeat=ours)
    conn.initiate()
    conn.receive_data(start())
    conn.receive_data(method(0, "connection.tune", 0, 0, theirs))
    assert parse(conn.data_to_send())[1][2][2] == expected
    assert conn.heartbeat_interval == expected


def test_external_auth() -> None:
    conn = Connection(auth_mechanism="EXTERNAL")
    conn.initiate()
    conn.receive_data(start(mechanisms=b"PLAIN EXTERNAL"))
    _, _, args = parse(conn.data_to_send())[0]
    assert args[1:3] == ("EXTERNAL", b"")


def test_mechanism_not_offered() -> None:
    conn = Connection(auth_mechanism="EXTERNAL")
    conn.initiate()
    conn.receive_data(start(mechanisms=b"PLAIN AMQPLAIN"))
    with pytest.raises(RemoteProtocolError, match="EXTERNAL") as info:
        conn.next_event()
    assert info.value.reply_code == ReplyCode.ACCESS_REFUSED
    assert conn.state is ConnectionState.FAILED


def test_wrong_protocol_version() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(method(0, "connection.start", 0, 8, {}, b"PLAIN", b"en_US"))
    with pytest.raises(RemoteProtocolError, match="0-8"):
        conn.next_event()


def test_server_replies_with_its_protocol_header() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(b"AMQP\x00\x00\x09\x00")
    with pytest.raises(RemoteProtocolError, match="refused AMQP 0-9-1"):
        conn.next_event()


def test_tiny_frame_max_from_server_is_refused() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(start() + method(0, "connection.tune", 0, 1024, 0))
    with pytest.raises(RemoteProtocolError, match="frame_max"):
        conn.next_event()


def test_auth_failure_close_during_handshake() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(start())
    conn.receive_data(method(0, "connection.close", 403, "ACCESS_REFUSED - Login was refused", 0, 0))
    [event] = drain(conn)
    assert event == ConnectionClosed(403, "ACCESS_REFUSED - Login was refused", 0, 0, by_peer=True)
    assert event.reply_name == "ACCESS_REFUSED"
    assert names(conn.data_to_send()) == ["connection.start-ok", "connection.close-ok"]
    assert conn.state is ConnectionState.CLOSED


def test_eof_during_authentication_hints_at_credentials() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(start())
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="bad credentials") as info:
        conn.next_event()
    assert info.value.reply_code == ReplyCode.ACCESS_REFUSED


def test_eof_while_open_fails_connection() -> None:
    conn = open_connection()
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed the connection"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"more")


def test_vhost_refused_during_open() -> None:
    conn = Connection(vhost="nope")
    conn.initiate()
    conn.receive_data(start() + method(0, "connection.tune", 0, 0, 0))
    conn.receive_data(method(0, "connection.close", 530, "NOT_ALLOWED - vhost nope not found", 10, 40))
    [event] = drain(conn)
    assert isinstance(event, ConnectionClosed)
    assert (event.reply_name, event.class_id, event.method_id) == ("NOT_ALLOWED", 10, 40)


def test_api_misuse_before_and_during_handshake() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError, match="initiate"):
        conn.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        conn.open_channel()
    conn.initiate()
    with pytest.raises(LocalProtocolError):
        conn.initiate()
    with pytest.raises(LocalProtocolError):
        conn.heartbeat()
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(1, "", "q", b"")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_max": 100},
        {"frame_max": 2**32},
        {"channel_max": 0},
        {"heartbeat": -1},
        {"auth_mechanism": "CRAM-MD5"},
    ],
)
def test_constructor_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        Connection(**kwargs)  # type: ignore[arg-type]


def test_unexpected_method_during_handshake() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(method(0, "connection.tune", 0, 0, 0))
    with pytest.raises(RemoteProtocolError, match=r"unexpected connection\.tune"):
        conn.next_event()
