"""Test helpers: a scripted "server" built from kelp.amqp's own codecs (no network)."""

from __future__ import annotations

from typing import Any

from kelp.amqp import BasicProperties, Connection, ConnectionOpened, ConnectionState, Event
from kelp.amqp._frames import (
    FRAME_HEADER,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    FrameReader,
    encode_content,
    encode_frame,
)
from kelp.amqp._properties import decode_content_header
from kelp.amqp._spec import METHODS_BY_NAME, decode_method, encode_method

BIG = 2**31


def method(channel: int, name: str, *args: Any) -> bytes:
    """One method frame as the server would send it."""
    return encode_frame(FRAME_METHOD, channel, encode_method(METHODS_BY_NAME[name], args), BIG)


def content(
    channel: int,
    name: str,
    args: tuple[Any, ...],
    body: bytes,
    props: BasicProperties | None = None,
    frame_max: int = 131072,
) -> bytes:
    """A content-bearing method with header and body frames."""
    return encode_content(channel, encode_method(METHODS_BY_NAME[name], args), body, props, frame_max)


def start(mechanisms: bytes = b"PLAIN AMQPLAIN", props: dict[str, Any] | None = None) -> bytes:
    server_properties = props if props is not None else {"product": "RabbitMQ", "version": "3.13.0"}
    return method(0, "connection.start", 0, 9, server_properties, mechanisms, b"en_US")


def parse(data: bytes) -> list[tuple[int, str, tuple[Any, ...]]]:
    """What the client sent: ``(channel, method name or 'header'/'body'/'heartbeat', args)`` per frame."""
    reader = FrameReader(BIG)
    out: list[tuple[int, str, tuple[Any, ...]]] = []
    for frame_type, channel, payload in reader.feed(data):
        if frame_type == FRAME_METHOD:
            m, args = decode_method(payload)
            out.append((channel, m.name, args))
        elif frame_type == FRAME_HEADER:
            out.append((channel, "header", decode_content_header(payload)))
        elif frame_type == 3:
            out.append((channel, "body", (payload,)))
        else:
            out.append((channel, "heartbeat", ()))
    assert reader.error is None
    assert reader.buffered == 0
    return out


def names(data: bytes) -> list[str]:
    return [name for _, name, _ in parse(data)]


def state_of(conn: Connection) -> ConnectionState:
    """``conn.state`` without the type narrowing a previous ``assert conn.state is ...`` causes."""
    return conn.state


def drain(conn: Connection) -> list[Event]:
    return list(conn.events())


def open_connection(
    conn: Connection | None = None,
    *,
    channel_max: int = 2047,
    frame_max: int = 131072,
    heartbeat: int = 60,
) -> Connection:
    """Run the handshake to OPEN and clear all output/events."""
    conn = conn if conn is not None else Connection()
    assert conn.initiate() == PROTOCOL_HEADER
    conn.receive_data(start())
    conn.receive_data(method(0, "connection.tune", channel_max, frame_max, heartbeat))
    conn.receive_data(method(0, "connection.open-ok", ""))
    conn.data_to_send()
    events = drain(conn)
    assert isinstance(events[-1], ConnectionOpened)
    return conn


def open_channel(conn: Connection) -> int:
    channel, _ = conn.open_channel()
    conn.receive_data(method(channel, "channel.open-ok", b""))
    drain(conn)
    return channel
