"""Hostile input: whatever the bytes, receive_data/next_event raise RemoteProtocolError or nothing."""

from __future__ import annotations

import struct

import pytest
from amqp_kit import content, method, open_channel, open_connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelp.amqp import BasicProperties, Connection, RemoteProtocolError

FRAME_MAX = 4096
pytestmark = pytest.mark.timeout(300)


def _valid_stream() -> bytes:
    props = BasicProperties(content_type="a", headers={"k": [1, {"x": None}], "d": 1.5}, priority=3)
    return b"".join(
        [
            method(1, "basic.qos-ok"),
            content(1, "basic.deliver", ("ctag", 1, False, "ex", "rk"), b"x" * 5000, props, FRAME_MAX),
            method(1, "basic.ack", 1, True),
            method(0, "connection.blocked", "mem"),
            b"\x08\x00\x00\x00\x00\x00\x00\xce",
            content(1, "basic.return", (312, "NO_ROUTE", "ex", "rk"), b"r", None, FRAME_MAX),
            method(1, "channel.flow", True),
            method(1, "channel.close", 404, "NOT_FOUND", 50, 10),
            method(0, "connection.close", 320, "bye", 0, 0),
        ]
    )


VALID = _valid_stream()


def _fresh() -> Connection:
    conn = open_connection(frame_max=FRAME_MAX)
    channel = open_channel(conn)
    conn.confirm_select(channel)
    conn.basic_qos(channel, 1)
    conn.basic_publish(channel, "", "q", b"m")
    return conn


def _feed(conn: Connection, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            conn.receive_data(chunk)
            while conn.next_event() is not None:
                pass
        except RemoteProtocolError:
            return
        # never more than one frame's worth of unparsed bytes
        assert conn.buffered_bytes <= FRAME_MAX + 7


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_random_bytes(chunks: list[bytes]) -> None:
    _feed(_fresh(), chunks)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(VALID)),
    st.lists(st.integers(0, len(VALID)), max_size=8),
)
def test_corrupted_valid_stream(flips: list[tuple[int, int]], cut: int, cuts: list[int]) -> None:
    data = bytearray(VALID)
    for position, value in flips:
        data[position] = value
    stream = bytes(data[:cut])
    _feed(_fresh(), _chunked(stream, cuts))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 3), st.binary(max_size=40)),
        max_size=12,
    )
)
def test_well_framed_garbage(frames: list[tuple[int, int, bytes]]) -> None:
    # valid framing around random payloads exercises method/header/table decoding
    stream = b"".join(struct.pack(">BHI", t, ch, len(p)) + p + b"\xce" for t, ch, p in frames)
    _feed(_fresh(), [stream])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_method_payloads_with_known_ids(tail: bytes) -> None:
    conn = _fresh()
    for ids in (
        b"\x00\x3c\x00\x3c",
        b"\x00\x3c\x00\x47",
        b"\x00\x32\x00\x0b",
        b"\x00\x14\x00\x28",
        b"\x00\x3c\x00\x50",
    ):
        payload = ids + tail
        frame = struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"
        _feed(conn, [frame])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_during_handshake(data: bytes) -> None:
    conn = Connection()
    conn.initiate()
    _feed(conn, [data])
