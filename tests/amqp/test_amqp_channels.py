from __future__ import annotations

from typing import Any

import pytest
from amqp_kit import content, drain, method, names, open_channel, open_connection, parse, state_of

from kelp.amqp import (
    BasicProperties,
    CancelOk,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ChannelState,
    Confirmed,
    ConfirmSelectOk,
    Connection,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionState,
    ConnectionUnblocked,
    ConsumeOk,
    ConsumerCancelled,
    Deliver,
    Event,
    ExchangeBindOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeUnbindOk,
    FlowOk,
    GetEmpty,
    GetOk,
    LocalProtocolError,
    QosOk,
    QueueBindOk,
    QueueDeclareOk,
    QueueDeleteOk,
    QueuePurgeOk,
    QueueUnbindOk,
    RecoverOk,
    RemoteProtocolError,
    Return,
    TxCommitOk,
    TxRollbackOk,
    TxSelectOk,
    reply_code_name,
)


@pytest.fixture
def conn() -> Connection:
    return open_connection()


def test_open_channel(conn: Connection) -> None:
    channel, data = conn.open_channel()
    assert channel == 1
    assert parse(data) == [(1, "channel.open", ("",))]
    assert conn.channel_state(1) is ChannelState.OPENING
    with pytest.raises(LocalProtocolError, match="is OPENING"):
        conn.basic_publish(1, "", "q", b"")
    conn.receive_data(method(1, "channel.open-ok", b""))
    assert drain(conn) == [ChannelOpened(1)]
    assert conn.open_channels == (1,)


def test_channel_ids_rotate_and_are_bounded() -> None:
    conn = open_connection(channel_max=3)
    ids = [conn.open_channel()[0] for _ in range(3)]
    assert ids == [1, 2, 3]
    with pytest.raises(LocalProtocolError, match="all 3 channels"):
        conn.open_channel()
    with pytest.raises(LocalProtocolError, match="already in use"):
        conn.open_channel(2)
    with pytest.raises(LocalProtocolError, match="out of range"):
        conn.open_channel(4)
    conn.receive_data(method(2, "channel.close", 504, "CHANNEL_ERROR", 20, 10))
    drain(conn)
    assert conn.open_channel()[0] == 2


# (command, args, kwargs, expected method, server reply, reply args, expected event)
COMMANDS: list[tuple[str, tuple[Any, ...], dict[str, Any], str, str, tuple[Any, ...], Event]] = [
    ("exchange_declare", ("ex", "topic"), {"durable": True}, "exchange.declare", "exchange.declare-ok", (),
     ExchangeDeclareOk(1)),
    ("exchange_delete", ("ex",), {"if_unused": True}, "exchange.delete", "exchange.delete-ok", (),
     ExchangeDeleteOk(1)),
    ("exchange_bind", ("dst", "src", "rk"), {}, "exchange.bind", "exchange.bind-ok", (), ExchangeBindOk(1)),
    ("exchange_unbind", ("dst", "src", "rk"), {}, "exchange.unbind", "exchange.unbind-ok", (),
     ExchangeUnbindOk(1)),
    ("queue_declare", ("",), {"exclusive": True, "arguments": {"x-max-priority": 10}}, "queue.declare",
     "queue.declare-ok", ("amq.gen-1", 3, 1), QueueDeclareOk(1, "amq.gen-1", 3, 1)),
    ("queue_bind", ("q", "ex", "rk"), {}, "queue.bind", "queue.bind-ok", (), QueueBindOk(1)),
    ("queue_unbind", ("q", "ex", "rk"), {}, "queue.unbind", "queue.unbind-ok", (), QueueUnbindOk(1)),
    ("queue_purge", ("q",), {}, "queue.purge", "queue.purge-ok", (7,), QueuePurgeOk(1, 7)),
    ("queue_delete", ("q",), {"if_empty": True}, "queue.delete", "queue.delete-ok", (2,),
     QueueDeleteOk(1, 2)),
    ("basic_qos", (10,), {"global_qos": True}, "basic.qos", "basic.qos-ok", (), QosOk(1)),
    ("basic_consume", ("q",), {"no_ack": True}, "basic.consume", "basic.consume-ok", ("ctag",),
     ConsumeOk(1, "ctag")),
    ("basic_cancel", ("ctag",), {}, "basic.cancel", "basic.cancel-ok", ("ctag",), CancelOk(1, "ctag")),
    ("basic_recover", (), {}, "basic.recover", "basic.recover-ok", (), RecoverOk(1)),
    ("confirm_select", (), {}, "confirm.select", "confirm.select-ok", (), ConfirmSelectOk(1)),
    ("channel_flow", (False,), {}, "channel.flow", "channel.flow-ok", (False,), FlowOk(1, False)),
    ("tx_select", (), {}, "tx.select", "tx.select-ok", (), TxSelectOk(1)),
    ("tx_commit", (), {}, "tx.commit", "tx.commit-ok", (), TxCommitOk(1)),
    ("tx_rollback", (), {}, "tx.rollback", "tx.rollback-ok", (), TxRollbackOk(1)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "args", "kwargs", "sent", "reply", "reply_args", "event"),
    COMMANDS,
    ids=[c[0] for c in COMMANDS],
)
def test_synchronous_commands(
    conn: Connection,
    command: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sent: str,
    reply: str,
    reply_args: tuple[Any, ...],
    event: Event,
) -> None:
    channel = open_channel(conn)
    data = getattr(conn, command)(channel, *args, **kwargs)
    [(ch, name, _)] = parse(data)
    assert (ch, name) == (channel, sent)
    conn.receive_data(method(channel, reply, *reply_args))
    assert drain(conn) == [event]
    # a second, unsolicited reply is a protocol violation
    conn.receive_data(method(channel, reply, *reply_args))
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.next_event()


def test_command_arguments_reach_the_wire(conn: Connection) -> None:
    channel = open_channel(conn)
    data = conn.queue_declare(channel, "jobs", durable=True, arguments={"x-queue-type": "quorum"})
    assert parse(data) == [
        (1, "queue.declare", (0, "jobs", False, True, False, False, False, {"x-queue-type": "quorum"}))
    ]
    data = conn.basic_consume(channel, "jobs", "c1", exclusive=True, nowait=True)
    assert parse(data)[0][2] == (0, "jobs", "c1", False, False, True, True, {})
    assert parse(conn.basic_reject(channel, 5, requeue=False)) == [(1, "basic.reject", (5, False))]
    assert parse(conn.basic_nack(channel, 6, multiple=True)) == [(1, "basic.nack", (6, True, True))]
    assert parse(conn.basic_ack(channel, 7, multiple=True)) == [(1, "basic.ack", (7, True))]
    assert parse(conn.basic_get(channel, "jobs", no_ack=True)) == [(1, "basic.get", (0, "jobs", True))]


def test_replies_are_matched_in_order(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.exchange_declare(channel, "ex")
    conn.queue_declare(channel, "q")
    conn.receive_data(method(channel, "queue.declare-ok", "q", 0, 0))
    with pytest.raises(RemoteProtocolError, match=r"awaiting \('exchange.declare-ok',\)"):
        conn.next_event()


def test_nowait_expects_no_reply(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.exchange_declare(channel, "ex", nowait=True)
    conn.receive_data(method(channel, "exchange.declare-ok"))
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        conn.next_event()


def test_nowait_needs_a_name(conn: Connection) -> None:
    channel = open_channel(conn)
    with pytest.raises(LocalProtocolError):
        conn.queue_declare(channel, "", nowait=True)
    with pytest.raises(LocalProtocolError):
        conn.basic_consume(channel, "q", "", nowait=True)


def test_local_errors_leave_state_unchanged(conn: Connection) -> None:
    channel = open_channel(conn)
    with pytest.raises(LocalProtocolError):
        conn.queue_declare(channel, "q" * 300)
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(channel, "", "q", b"", BasicProperties(priority=300))
    with pytest.raises(LocalProtocolError, match="out of range"):
        conn.basic_publish(5000, "", "q", b"")
    with pytest.raises(LocalProtocolError, match="not open"):
        conn.basic_ack(9, 1)
    # nothing was recorded as awaiting a reply
    conn.queue_declare(channel, "q")
    conn.receive_data(method(channel, "queue.declare-ok", "q", 0, 0))
    assert drain(conn) == [QueueDeclareOk(channel, "q", 0, 0)]


# -- content -------------------------------------------------------------------------------------------------


def test_publish_returns_frames(conn: Connection) -> None:
    channel = open_channel(conn)
    props = BasicProperties(content_type="text/plain", delivery_mode=2, headers={"a": 1})
    seq, data = conn.basic_publish(channel, "ex", "rk", b"hello", props, mandatory=True)
    assert seq is None
    assert parse(data) == [
        (1, "basic.publish", (0, "ex", "rk", True, False)),
        (1, "header", (60, 5, props)),
        (1, "body", (b"hello",)),
    ]


def test_deliver_event(conn: Connection) -> None:
    channel = open_channel(conn)
    props = BasicProperties(content_type="application/json", headers={"x-death": [{"count": 1}]})
    conn.receive_data(content(channel, "basic.deliver", ("ctag", 9, True, "ex", "rk"), b'{"a": 1}', props))
    assert drain(conn) == [Deliver(channel, "ctag", 9, True, "ex", "rk", props, b'{"a": 1}')]


def test_body_larger_than_frame_max_is_reassembled() -> None:
    conn = open_connection(frame_max=4096)
    channel = open_channel(conn)
    body = bytes(range(256)) * 100  # 25600 bytes: 7 body frames
    _, data = conn.basic_publish(channel, "", "q", body)
    sent = parse(data)
    assert [name for _, name, _ in sent].count("body") == 7
    assert b"".join(args[0] for _, name, args in sent if name == "body") == body

    stream = content(channel, "basic.deliver", ("c", 1, False, "", "q"), body, frame_max=4096)
    for i in range(0, len(stream), 1000):  # arbitrary chunking across frame boundaries
        conn.receive_data(stream[i : i + 1000])
        assert conn.buffered_bytes < 4096
    [event] = drain(conn)
    assert isinstance(event, Deliver)
    assert event.body == body


def test_content_on_two_channels_interleaves() -> None:
    conn = open_connection(frame_max=4096)
    a, b = open_channel(conn), open_channel(conn)
    body_a, body_b = b"a" * 9000, b"b" * 9000
    frames_a = _frames(content(a, "basic.deliver", ("ca", 1, False, "", "q"), body_a, frame_max=4096))
    frames_b = _frames(content(b, "basic.deliver", ("cb", 1, False, "", "q"), body_b, frame_max=4096))
    interleaved = b"".join(x + y for x, y in zip(frames_a, frames_b))
    conn.receive_data(interleaved)
    events = drain(conn)
    assert [(e.channel, e.body) for e in events if isinstance(e, Deliver)] == [(a, body_a), (b, body_b)]


def _frames(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 3 : pos + 7], "big")
        out.append(data[pos : pos + 8 + size])
        pos += 8 + size
    return out


def test_get_ok_get_empty_and_return(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.basic_get(channel, "q")
    conn.receive_data(content(channel, "basic.get-ok", (4, False, "ex", "rk", 10), b""))
    conn.basic_get(channel, "q")
    conn.receive_data(method(channel, "basic.get-empty", ""))
    conn.receive_data(content(channel, "basic.return", (312, "NO_ROUTE", "ex", "nowhere"), b"lost"))
    get_ok, empty, returned = drain(conn)
    assert get_ok == GetOk(channel, 4, False, "ex", "rk", 10, BasicProperties(), b"")
    assert empty == GetEmpty(channel)
    assert returned == Return(channel, 312, "NO_ROUTE", "ex", "nowhere", BasicProperties(), b"lost")
    assert isinstance(returned, Return)
    assert returned.reply_name == "NO_ROUTE"


@pytest.mark.parametrize(
    "case",
    ["header_without_method", "body_without_header", "method_inside_content", "body_too_long", "wrong_class"],
)
def test_content_sequence_violations(conn: Connection, case: str) -> None:
    channel = open_channel(conn)
    deliver = content(channel, "basic.deliver", ("c", 1, False, "", "q"), b"12345")
    method_frame, header, body = _frames(deliver)
    stream = {
        "header_without_method": header,
        "body_without_header": method_frame + body,
        "method_inside_content": method_frame + header + method_frame,
        "body_too_long": method_frame + header + body.replace(b"\x05", b"\x06", 1)[:-1] + b"6\xce",
        "wrong_class": method_frame + header.replace(b"\x00\x3c", b"\x00\x32", 1),
    }[case]
    conn.receive_data(stream)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_max_body_size() -> None:
    conn = open_connection(Connection(max_body_size=10))
    channel = open_channel(conn)
    conn.receive_data(content(channel, "basic.deliver", ("c", 1, False, "", "q"), b"x" * 11))
    with pytest.raises(RemoteProtocolError, match="max_body_size"):
        conn.next_event()


def test_frames_for_unknown_channel(conn: Connection) -> None:
    conn.receive_data(content(7, "basic.deliver", ("c", 1, False, "", "q"), b"x"))
    with pytest.raises(RemoteProtocolError, match="channel 7"):
        conn.next_event()


# -- publisher confirms --------------------------------------------------------------------------------------


def _confirming(conn: Connection, count: int) -> int:
    channel = open_channel(conn)
    conn.confirm_select(channel)
    conn.receive_data(method(channel, "confirm.select-ok"))
    drain(conn)
    seqs = [conn.basic_publish(channel, "", "q", b"m")[0] for _ in range(count)]
    assert seqs == list(range(1, count + 1))
    return channel


def tags(conn: Connection) -> list[tuple[list[int], bool]]:
    return [(list(e.delivery_tags), e.ack) for e in drain(conn)]  # type: ignore[attr-defined]


def test_confirm_multiple(conn: Connection) -> None:
    channel = _confirming(conn, 5)
    conn.receive_data(method(channel, "basic.ack", 3, True))
    [event] = drain(conn)
    assert isinstance(event, Confirmed)
    assert event.delivery_tags == range(1, 4)  # a range: a driver resolves futures without building lists
    conn.receive_data(method(channel, "basic.ack", 5, True))
    assert tags(conn) == [([4, 5], True)]


def test_confirm_multiple_skips_tags_already_settled(conn: Connection) -> None:
    channel = _confirming(conn, 6)
    conn.receive_data(method(channel, "basic.ack", 2, False))
    conn.receive_data(method(channel, "basic.nack", 4, False, False))
    conn.receive_data(method(channel, "basic.ack", 5, True))
    conn.receive_data(method(channel, "basic.ack", 6, False))
    assert tags(conn) == [([2], True), ([4], False), ([1, 3, 5], True), ([6], True)]


def test_confirm_single_in_order_advances(conn: Connection) -> None:
    channel = _confirming(conn, 3)
    for tag in (2, 1, 3):
        conn.receive_data(method(channel, "basic.ack", tag, False))
    conn.receive_data(method(channel, "basic.ack", 3, True))  # nothing new: no event
    assert tags(conn) == [([2], True), ([1], True), ([3], True)]


def test_confirm_nack_multiple_and_tag_zero(conn: Connection) -> None:
    channel = _confirming(conn, 4)
    conn.receive_data(method(channel, "basic.nack", 2, True, True))
    conn.receive_data(method(channel, "basic.ack", 0, True))
    assert tags(conn) == [([1, 2], False), ([3, 4], True)]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([("basic.ack", 9, False)], "only 3 were published"),
        ([("basic.ack", 0, False)], "only 3 were published"),
        ([("basic.ack", 2, False), ("basic.ack", 2, False)], "already confirmed"),
    ],
)
def test_confirm_violations(conn: Connection, frames: list[tuple[Any, ...]], match: str) -> None:
    channel = _confirming(conn, 3)
    for name, *args in frames:
        conn.receive_data(method(channel, name, *args))
    with pytest.raises(RemoteProtocolError, match=match):
        drain(conn)


def test_ack_outside_confirm_mode(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.receive_data(method(channel, "basic.ack", 1, False))
    with pytest.raises(RemoteProtocolError, match="not in confirm mode"):
        conn.next_event()


# -- closing -------------------------------------------------------------------------------------------------


def test_server_closes_channel(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.queue_declare(channel, "missing", passive=True)
    conn.receive_data(method(channel, "channel.close", 404, "NOT_FOUND - no queue 'missing'", 50, 10))
    [event] = drain(conn)
    assert event == ChannelClosed(channel, 404, "NOT_FOUND - no queue 'missing'", 50, 10, by_peer=True)
    assert isinstance(event, ChannelClosed)
    assert event.reply_name == "NOT_FOUND"
    assert parse(conn.data_to_send()) == [(channel, "channel.close-ok", ())]
    assert conn.channel_state(channel) is ChannelState.CLOSED
    with pytest.raises(LocalProtocolError, match="not open"):
        conn.basic_publish(channel, "", "q", b"")


def test_client_closes_channel_and_discards_in_flight_frames(conn: Connection) -> None:
    channel = open_channel(conn)
    deliver = content(channel, "basic.deliver", ("c", 1, False, "", "q"), b"body")
    conn.receive_data(_frames(deliver)[0])  # a delivery has started...
    data = conn.close_channel(channel)
    assert parse(data) == [(channel, "channel.close", (200, "", 0, 0))]
    assert conn.channel_state(channel) is ChannelState.CLOSING
    conn.receive_data(b"".join(_frames(deliver)[1:]) + deliver + method(channel, "basic.qos-ok"))
    assert drain(conn) == []
    conn.receive_data(method(channel, "channel.close-ok"))
    assert drain(conn) == [ChannelClosed(channel, 200, "", 0, 0, by_peer=False)]
    assert conn.channel_state(channel) is ChannelState.CLOSED


def test_simultaneous_channel_close(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.close_channel(channel)
    conn.receive_data(method(channel, "channel.close", 406, "PRECONDITION_FAILED", 40, 10))
    assert drain(conn) == []
    assert names(conn.data_to_send()) == ["channel.close-ok"]
    conn.receive_data(method(channel, "channel.close-ok"))
    assert drain(conn) == [ChannelClosed(channel, 406, "PRECONDITION_FAILED", 40, 10, by_peer=True)]


def test_server_closes_connection(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.receive_data(
        method(0, "connection.close", 320, "CONNECTION_FORCED - shutdown", 0, 0)
        + method(channel, "basic.qos-ok")  # ignored: the connection is closed
    )
    assert drain(conn) == [ConnectionClosed(320, "CONNECTION_FORCED - shutdown", 0, 0, by_peer=True)]
    assert names(conn.data_to_send()) == ["connection.close-ok"]
    assert conn.state is ConnectionState.CLOSED
    conn.receive_data(b"late bytes are ignored")
    conn.receive_data(b"")
    assert drain(conn) == []
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(channel, "", "q", b"")
    with pytest.raises(LocalProtocolError):
        conn.open_channel()


def test_client_closes_connection(conn: Connection) -> None:
    channel = open_channel(conn)
    data = conn.close(200, "bye")
    assert parse(data) == [(0, "connection.close", (200, "bye", 0, 0))]
    assert conn.state is ConnectionState.CLOSING
    with pytest.raises(LocalProtocolError):
        conn.basic_publish(channel, "", "q", b"")
    conn.receive_data(content(channel, "basic.deliver", ("c", 1, False, "", "q"), b"discarded"))
    conn.receive_data(method(0, "connection.blocked", "ignored while closing"))
    assert drain(conn) == []
    conn.heartbeat()  # still allowed while waiting for close-ok
    conn.receive_data(method(0, "connection.close-ok"))
    assert drain(conn) == [ConnectionClosed(200, "bye", 0, 0, by_peer=False)]
    assert state_of(conn) is ConnectionState.CLOSED


def test_eof_while_closing_counts_as_closed(conn: Connection) -> None:
    conn.close()
    conn.receive_data(b"")
    assert drain(conn) == [ConnectionClosed(200, "", 0, 0, by_peer=False)]


def test_reply_code_names() -> None:
    assert reply_code_name(404) == "NOT_FOUND"
    assert reply_code_name(406) == "PRECONDITION_FAILED"
    assert reply_code_name(403) == "ACCESS_REFUSED"
    assert reply_code_name(405) == "RESOURCE_LOCKED"
    assert reply_code_name(312) == "NO_ROUTE"
    assert reply_code_name(320) == "CONNECTION_FORCED"
    assert reply_code_name(999) == "UNKNOWN_999"


# -- other server-initiated methods --------------------------------------------------------------------------


def test_blocked_and_unblocked(conn: Connection) -> None:
    conn.receive_data(method(0, "connection.blocked", "low on memory") + method(0, "connection.unblocked"))
    assert drain(conn) == [ConnectionBlocked("low on memory"), ConnectionUnblocked()]


def test_server_flow_is_answered(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.receive_data(method(channel, "channel.flow", False))
    assert drain(conn) == [ChannelFlow(channel, False)]
    assert parse(conn.data_to_send()) == [(channel, "channel.flow-ok", (False,))]


@pytest.mark.parametrize("nowait", [True, False])
def test_server_cancels_consumer(conn: Connection, nowait: bool) -> None:
    channel = open_channel(conn)
    conn.receive_data(method(channel, "basic.cancel", "ctag", nowait))
    assert drain(conn) == [ConsumerCancelled(channel, "ctag")]
    assert names(conn.data_to_send()) == ([] if nowait else ["basic.cancel-ok"])


def test_pending_core_bytes_precede_command_bytes(conn: Connection) -> None:
    a, b = open_channel(conn), open_channel(conn)
    conn.receive_data(method(a, "channel.close", 404, "NOT_FOUND", 50, 10))
    drain(conn)
    _, data = conn.basic_publish(b, "", "q", b"x")
    assert names(data) == ["channel.close-ok", "basic.publish", "header", "body"]
    assert conn.data_to_send() == b""


def test_unexpected_methods(conn: Connection) -> None:
    channel = open_channel(conn)
    conn.receive_data(method(channel, "basic.publish", 0, "", "q", False, False))
    with pytest.raises(RemoteProtocolError, match=r"unexpected basic\.publish"):
        conn.next_event()


def test_connection_method_on_channel_and_channel_method_on_zero(conn: Connection) -> None:
    conn.receive_data(method(0, "channel.open-ok", b""))
    with pytest.raises(RemoteProtocolError, match="channel 0"):
        conn.next_event()
    other = open_connection()
    channel = open_channel(other)
    other.receive_data(method(channel, "connection.blocked", "x"))
    with pytest.raises(RemoteProtocolError):
        other.next_event()


def test_events_before_a_fault_are_delivered_first(conn: Connection) -> None:
    conn.receive_data(method(0, "connection.blocked", "a") + b"\x01\x00\x00\x00\x00\x00\x04abcd\x00")
    assert conn.next_event() == ConnectionBlocked("a")
    with pytest.raises(RemoteProtocolError, match="frame end"):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.state is ConnectionState.FAILED


def test_oversized_frame_after_tune() -> None:
    conn = open_connection(frame_max=4096)
    conn.receive_data(b"\x03\x00\x01\x00\x00\x10\x00")  # announces a 4096-byte payload
    with pytest.raises(RemoteProtocolError, match="exceeds frame_max 4096"):
        conn.next_event()
    assert conn.buffered_bytes <= 4096 + 7


def test_bytes_like_input_and_events_iterator(conn: Connection) -> None:
    channel = open_channel(conn)
    stream = content(channel, "basic.deliver", ("c", 1, False, "", "q"), b"ab")
    conn.receive_data(bytearray(stream[:10]))
    conn.receive_data(memoryview(stream)[10:])
    assert [type(e) for e in conn.events()] == [Deliver]
    assert conn.data_to_send() == b""


def test_close_requires_an_open_connection() -> None:
    conn = Connection()
    with pytest.raises(LocalProtocolError):
        conn.close()
    conn = open_connection()
    conn.close()
    with pytest.raises(LocalProtocolError):
        conn.close()


def test_get_ok_body_split_across_frames() -> None:
    conn = open_connection(frame_max=4096)
    channel = open_channel(conn)
    conn.basic_get(channel, "q")
    body = b"g" * 10_000
    props = BasicProperties(message_id="m1", timestamp=1_700_000_000)
    conn.receive_data(content(channel, "basic.get-ok", (1, True, "", "q", 0), body, props, frame_max=4096))
    assert drain(conn) == [GetOk(channel, 1, True, "", "q", 0, props, body)]
