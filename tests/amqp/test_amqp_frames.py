from __future__ import annotations

import struct

import pytest

from kelp.amqp import BasicProperties, LocalProtocolError, RemoteProtocolError
from kelp.amqp._frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    FrameReader,
    encode_content,
    encode_frame,
    encode_publish,
)
from kelp.amqp._spec import METHODS_BY_NAME, encode_basic_publish, encode_method


def frame(frame_type: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end


def test_encode_frame_layout() -> None:
    assert encode_frame(FRAME_METHOD, 3, b"abc", 4096) == b"\x01\x00\x03\x00\x00\x00\x03abc\xce"
    assert frame(8, 0, b"") == HEARTBEAT_FRAME


def test_encode_frame_enforces_frame_max() -> None:
    assert len(encode_frame(FRAME_METHOD, 1, b"x" * (4096 - 8), 4096)) == 4096
    with pytest.raises(LocalProtocolError, match="exceeds the negotiated frame_max"):
        encode_frame(FRAME_METHOD, 1, b"x" * (4096 - 7), 4096)


@pytest.mark.parametrize("size", [0, 1, 4088, 4089, 3 * 4088, 3 * 4088 + 1, 100_000])
def test_body_split_by_frame_max(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    data = encode_publish(1, "ex", "rk", body, BasicProperties(content_type="t"), False, False, 4096)
    frames = FrameReader(4096).feed(data)
    assert [f[0] for f in frames[:2]] == [FRAME_METHOD, FRAME_HEADER]
    bodies = frames[2:]
    assert all(f[0] == FRAME_BODY and len(f[2]) <= 4088 for f in bodies)
    assert len(bodies) == -(-size // 4088)
    assert b"".join(f[2] for f in bodies) == body
    # the generic path produces the same bytes
    method = encode_method(METHODS_BY_NAME["basic.publish"], (0, "ex", "rk", False, False))
    assert encode_content(1, method, body, BasicProperties(content_type="t"), 4096) == data
    assert encode_basic_publish("ex", "rk", False, False) == method


def test_publish_refuses_headers_larger_than_a_frame() -> None:
    props = BasicProperties(headers={"big": "x" * 5000})
    with pytest.raises(LocalProtocolError, match="do not fit"):
        encode_publish(1, "", "q", b"", props, False, False, 4096)


def test_reader_byte_by_byte() -> None:
    stream = frame(1, 0, b"abcd") + frame(3, 2, b"") + frame(8, 0, b"") + frame(2, 5, b"x" * 100)
    reader = FrameReader(4096)
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i : i + 1])
        assert reader.buffered <= 4096
    assert got == [(1, 0, b"abcd"), (3, 2, b""), (8, 0, b""), (2, 5, b"x" * 100)]
    assert reader.buffered == 0


def test_reader_many_frames_in_one_chunk() -> None:
    frames = [frame(3, 1, bytes([i]) * i) for i in range(50)]
    assert [f[2] for f in FrameReader(4096).feed(b"".join(frames))] == [bytes([i]) * i for i in range(50)]


def test_reader_rejects_bad_frame_end() -> None:
    reader = FrameReader(4096)
    frames = reader.feed(frame(1, 0, b"ok") + frame(1, 0, b"abc", end=b"\x00"))
    assert frames == [(1, 0, b"ok")]
    assert isinstance(reader.error, RemoteProtocolError)
    assert "frame end" in str(reader.error)
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"more")


def test_reader_rejects_oversized_frame_before_buffering_it() -> None:
    reader = FrameReader(4096)
    header = struct.pack(">BHI", 3, 1, 4089)  # one byte over the 4088-byte payload limit
    assert reader.feed(header) == []
    assert reader.error is not None
    assert "exceeds frame_max" in str(reader.error)
    assert reader.buffered <= 7


def test_reader_accepts_exactly_frame_max() -> None:
    reader = FrameReader(4096)
    data = frame(3, 1, b"x" * 4088)
    assert len(data) == 4096
    assert reader.feed(data) == [(3, 1, b"x" * 4088)]


def test_reader_rejects_unknown_frame_type() -> None:
    reader = FrameReader(4096)
    reader.feed(frame(4, 0, b""))
    assert reader.error is not None
    assert "unknown frame type" in str(reader.error)


def test_reader_explains_protocol_header_reply() -> None:
    reader = FrameReader(4096)
    reader.feed(b"AMQP\x00\x00\x09\x00")
    assert reader.error is not None
    assert "refused AMQP 0-9-1" in str(reader.error)


def test_buffer_is_bounded_by_one_frame() -> None:
    reader = FrameReader(4096)
    big = frame(3, 1, b"y" * 4088)
    stream = big * 5
    for i in range(0, len(stream), 1000):
        reader.feed(stream[i : i + 1000])
        assert reader.buffered < 4096
