from __future__ import annotations

import pytest
from amqp_kit import drain, method, open_channel, open_connection

from kelp.amqp import Connection, Heartbeat, RemoteProtocolError
from kelp.amqp._frames import HEARTBEAT_FRAME


def test_deadlines_follow_the_timestamps_we_pass_in() -> None:
    conn = open_connection(heartbeat=60)
    assert conn.heartbeat_interval == 60
    assert conn.next_heartbeat_deadline() is None  # nothing sent yet
    assert not conn.needs_heartbeat(1000.0)
    conn.note_sent(100.0)
    assert conn.next_heartbeat_deadline() == 130.0
    assert not conn.needs_heartbeat(129.9)
    assert conn.needs_heartbeat(130.0)
    conn.note_sent(125.0)  # any write resets the send deadline
    assert not conn.needs_heartbeat(130.0)


def test_dead_peer_after_two_missed_intervals() -> None:
    conn = open_connection(heartbeat=10)
    assert conn.peer_deadline() is None
    conn.receive_data(HEARTBEAT_FRAME, now=50.0)
    assert conn.peer_deadline() == 70.0
    assert not conn.peer_timed_out(70.0)
    assert conn.peer_timed_out(70.1)
    conn.note_received(69.0)
    assert not conn.peer_timed_out(70.1)


def test_disabled_heartbeats_have_no_deadlines() -> None:
    conn = open_connection(Connection(heartbeat=0))
    conn.note_sent(0.0)
    conn.note_received(0.0)
    assert conn.next_heartbeat_deadline() is None
    assert conn.peer_deadline() is None
    assert not conn.needs_heartbeat(1e9)
    assert not conn.peer_timed_out(1e9)


def test_heartbeat_frames() -> None:
    conn = open_connection()
    assert conn.heartbeat() == HEARTBEAT_FRAME
    conn.receive_data(HEARTBEAT_FRAME + HEARTBEAT_FRAME)
    assert drain(conn) == [Heartbeat(), Heartbeat()]


@pytest.mark.parametrize("frame", [b"\x08\x00\x01\x00\x00\x00\x00\xce", b"\x08\x00\x00\x00\x00\x00\x01x\xce"])
def test_malformed_heartbeat(frame: bytes) -> None:
    conn = open_connection()
    open_channel(conn)
    conn.receive_data(frame)
    with pytest.raises(RemoteProtocolError, match="heartbeat"):
        conn.next_event()


def test_heartbeat_during_handshake_is_fine() -> None:
    conn = Connection()
    conn.initiate()
    conn.receive_data(HEARTBEAT_FRAME + method(0, "connection.start", 0, 9, {}, b"PLAIN", b"en_US"))
    assert drain(conn) == [Heartbeat()]
