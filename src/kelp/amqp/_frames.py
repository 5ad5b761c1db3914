"""Frame layer: encoding frames (splitting bodies by ``frame_max``) and a bounded incremental frame reader.

A frame is ``type(8) channel(16) size(32) payload frame-end(0xCE)``; ``frame_max`` bounds the whole frame,
so a payload may be at most ``frame_max - 8`` bytes.
"""

from __future__ import annotations

import struct

from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode
from ._properties import BasicProperties, encode_content_header
from ._spec import encode_basic_publish

__all__ = [
    "FRAME_BODY",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_HEARTBEAT",
    "FRAME_METHOD",
    "FRAME_MIN_SIZE",
    "HEARTBEAT_FRAME",
    "PROTOCOL_HEADER",
    "FrameReader",
    "encode_content",
    "encode_frame",
    "encode_publish",
]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_MIN_SIZE = 4096
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_END = b"\xce"
_HEAD = struct.Struct(">BHI")
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_VALID_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})

Frame = tuple[int, int, bytes]


def encode_frame(frame_type: int, channel: int, payload: bytes, frame_max: int) -> bytes:
    """One frame; :class:`LocalProtocolError` if it would exceed ``frame_max``."""
    if len(payload) + 8 > frame_max:
        raise LocalProtocolError(
            f"frame of {len(payload) + 8} bytes exceeds the negotiated frame_max of {frame_max}"
            " (method arguments or message headers too large)"
        )
    return b"".join((_pack_head(frame_type, channel, len(payload)), payload, _END))


def _append_body(parts: list[bytes | memoryview], channel: int, body: bytes, max_payload: int) -> None:
    size = len(body)
    if size <= max_payload:
        if size:
            parts += (_pack_head(FRAME_BODY, channel, size), body, _END)
        return
    view = memoryview(body)
    for offset in range(0, size, max_payload):
        chunk = view[offset : offset + max_payload]
        parts += (_pack_head(FRAME_BODY, channel, len(chunk)), chunk, _END)


def encode_content(
    channel: int, method: bytes, body: bytes, props: BasicProperties | None, frame_max: int
) -> bytes:
    """Method frame + content header + body frames (body split so no frame exceeds ``frame_max``)."""
    header = encode_content_header(len(body), props)
    parts: list[bytes | memoryview] = [encode_frame(FRAME_METHOD, channel, method, frame_max)]
    parts.append(encode_frame(FRAME_HEADER, channel, header, frame_max))
    _append_body(parts, channel, body, frame_max - 8)
    return b"".join(parts)


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    props: BasicProperties | None,
    mandatory: bool,
    immediate: bool,
    frame_max: int,
) -> bytes:
    """Hot path: the complete byte sequence for one ``basic.publish`` with its content."""
    method = encode_basic_publish(exchange, routing_key, mandatory, immediate)
    header = encode_content_header(len(body), props)
    max_payload = frame_max - 8
    if len(header) > max_payload:
        raise LocalProtocolError(
            f"message properties ({len(header)} bytes) do not fit the negotiated frame_max of {frame_max}"
        )
    parts: list[bytes | memoryview] = [
        _pack_head(FRAME_METHOD, channel, len(method)),
        method,
        _END,
        _pack_head(FRAME_HEADER, channel, len(header)),
        header,
        _END,
    ]
    _append_body(parts, channel, body, max_payload)
    return b"".join(parts)


class FrameReader:
    """Split a byte stream into ``(type, channel, payload)`` frames without unbounded buffering.

    Complete frames are cut out as soon as they arrive; only the incomplete tail is kept, and a frame header
    announcing more than ``max_frame - 8`` payload bytes is rejected before its payload is buffered.  So the
    buffer never holds more than one maximum-size frame.
    """

    __slots__ = ("_need", "_started", "_tail", "error", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.error: RemoteProtocolError | None = None
        self._tail = bytearray()
        self._need = 7
        self._started = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._tail)

    def feed(self, data: bytes) -> list[Frame]:
        """Return every frame completed by ``data``.

        On malformed input the frames before the fault are returned and :attr:`error` is set; the reader
        then refuses further input.
        """
        if self.error is not None:
            raise self.error
        if self._tail:
            self._tail += data
            if len(self._tail) < self._need:
                return []
            data = bytes(self._tail)
            self._tail = bytearray()
        frames: list[Frame] = []
        pos = 0
        size_limit = self.max_frame - 8
        total = len(data)
        if not self._started and total:
            self._started = True
            if data[0] == 0x41:  # 'A': a protocol header instead of a frame
                self.error = RemoteProtocolError(
                    f"server refused AMQP 0-9-1 and offered protocol header {data[:8]!r}",
                    ReplyCode.NOT_IMPLEMENTED,
                )
                return frames
        while True:
            if total - pos < 7:
                need = 7
                break
            frame_type, channel, size = _unpack_head(data, pos)
            if frame_type not in _VALID_TYPES:
                self.error = RemoteProtocolError(f"unknown frame type {frame_type}", ReplyCode.FRAME_ERROR)
                return frames
            if size > size_limit:
                self.error = RemoteProtocolError(
                    f"frame payload of {size} bytes exceeds frame_max {self.max_frame}", ReplyCode.FRAME_ERROR
                )
                return frames
            end = pos + 7 + size
            if end >= total:
                need = end + 1 - pos
                break
            if data[end] != FRAME_END:
                self.error = RemoteProtocolError(
                    f"bad frame end octet 0x{data[end]:02x} (expected 0xce)", ReplyCode.FRAME_ERROR
                )
                return frames
            frames.append((frame_type, channel, data[pos + 7 : end]))
            pos = end + 1
        if pos < total:
            self._tail = bytearray(data[pos:] if pos else data)
        self._need = need
        return frames
