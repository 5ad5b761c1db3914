"""Foreign messages: property bytes RabbitMQ relays unchecked never fail the decoder or lose frame sync."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from amqp_kit import content, drain, method, open_channel, open_connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelp.amqp import BasicProperties, Deliver, RemoteProtocolError
from kelp.amqp._fields import decode_shortstr, decode_table, encode_table
from kelp.amqp._frames import FRAME_HEADER, encode_frame
from kelp.amqp._properties import decode_content_header, encode_content_header
from kelp.amqp._spec import METHODS_BY_NAME, decode_basic_deliver, encode_method

NOT_UTF8 = b"\xff\xfe app/\xc3("  # an invalid start byte and a truncated two-byte sequence

SHORTSTR_FLAGS = {
    0x8000: "content_type",
    0x4000: "content_encoding",
    0x0400: "correlation_id",
    0x0200: "reply_to",
    0x0100: "expiration",
    0x0080: "message_id",
    0x0020: "type",
    0x0010: "user_id",
    0x0008: "app_id",
    0x0004: "cluster_id",
}


def _header(flags: int, fields: bytes, body_size: int = 3) -> bytes:
    return struct.pack(">HHQH", 60, 0, body_size, flags) + fields


def _raw_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(bytes([len(k)]) + k + v for k, v in entries)
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(("flag", "name"), sorted(SHORTSTR_FLAGS.items()))
def test_shortstr_property_that_is_not_utf8_keeps_its_bytes(flag: int, name: str) -> None:
    payload = _header(flag, bytes([len(NOT_UTF8)]) + NOT_UTF8)
    _, size, props = decode_content_header(payload)
    value = getattr(props, name)
    assert isinstance(value, str)
    assert value.encode("utf-8", "surrogateescape") == NOT_UTF8
    assert encode_content_header(size, props) == payload  # sent on unchanged


def test_header_key_and_shortstr_that_are_not_utf8() -> None:
    raw = _raw_table([(NOT_UTF8, b"I\x00\x00\x00\x07"), (b"ok", b"S\x00\x00\x00\x01\xff")])
    table, end = decode_table(raw, 0, len(raw))
    assert end == len(raw)
    key = NOT_UTF8.decode("utf-8", "surrogateescape")
    assert table == {key: 7, "ok": b"\xff"}  # a long string that is not text stays bytes
    assert encode_table({key: 7}) == _raw_table([(NOT_UTF8, b"I\x00\x00\x00\x07")])
    assert decode_shortstr(b"\x01\xff", 0, 2) == ("\udcff", 2)


@pytest.mark.parametrize("seconds", [253402300800, 2**63, 2**64 - 1])
def test_header_timestamp_past_year_9999_is_kept_as_seconds(seconds: int) -> None:
    raw = _raw_table([(b"t", b"T" + struct.pack(">Q", seconds)), (b"after", b"t\x01")])
    assert decode_table(raw, 0, len(raw)) == ({"t": seconds, "after": True}, len(raw))


def test_header_timestamp_in_range_is_a_datetime() -> None:
    raw = _raw_table([(b"t", b"T" + struct.pack(">Q", 253402300799))])
    assert decode_table(raw, 0, len(raw))[0] == {"t": datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)}


def test_deliver_names_that_are_not_utf8() -> None:
    args = ("\udcffc", 5, True, "ex\udcfe", NOT_UTF8.decode("utf-8", "surrogateescape"))
    payload = encode_method(METHODS_BY_NAME["basic.deliver"], args)
    assert NOT_UTF8 in payload
    assert decode_basic_deliver(payload) == args


def test_text_with_surrogates_that_no_bytes_made_is_refused() -> None:
    from kelp.amqp import LocalProtocolError
    from kelp.amqp._fields import encode_text

    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode_text("\ud800")
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode_content_header(0, BasicProperties(message_id="\ud800"))


# -- hypothesis: arbitrary property bytes -------------------------------------------------------------------

shortstrs = st.binary(max_size=255).map(lambda b: bytes([len(b)]) + b)
_FIXED_SIZES = {b"b": 1, b"B": 1, b"s": 2, b"u": 2, b"I": 4, b"i": 4, b"l": 8, b"f": 4, b"d": 8, b"T": 8}


def _lengthed(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">I", len(body)) + body


def _values(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    entries = st.lists(st.tuples(st.binary(max_size=20), children), max_size=4)
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: _lengthed(b"A", b"".join(items))),
        entries.map(lambda es: b"F" + _raw_table(es)),
    )


scalar_values = st.one_of(
    st.sampled_from(sorted(_FIXED_SIZES)).flatmap(
        lambda tag: st.binary(min_size=_FIXED_SIZES[tag], max_size=_FIXED_SIZES[tag]).map(lambda b: tag + b)
    ),
    st.binary(max_size=40).map(lambda b: _lengthed(b"S", b)),
    st.binary(max_size=40).map(lambda b: _lengthed(b"x", b)),
    st.binary(min_size=1, max_size=1).map(lambda b: b"t" + b),
    st.binary(min_size=5, max_size=5).map(lambda b: b"D" + b),
    st.just(b"V"),
)
field_values = st.recursive(scalar_values, _values, max_leaves=12)
tables = st.lists(st.tuples(st.binary(max_size=30), field_values), max_size=6).map(_raw_table)


@st.composite
def well_framed_headers(draw: st.DrawFn) -> bytes:
    """A content-header payload whose every property is well framed, with arbitrary bytes inside."""
    flags = draw(st.integers(0, 0x3FFF)) << 2
    fields = []
    for bit in range(15, 1, -1):
        flag = 1 << bit
        if not flags & flag:
            continue
        if flag in SHORTSTR_FLAGS:
            fields.append(draw(shortstrs))
        elif flag == 0x2000:
            fields.append(draw(tables))
        elif flag == 0x0040:
            fields.append(draw(st.binary(min_size=8, max_size=8)))
        else:  # delivery_mode, priority
            fields.append(draw(st.binary(min_size=1, max_size=1)))
    return _header(flags, b"".join(fields), draw(st.integers(0, 2**64 - 1)))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(well_framed_headers())
def test_any_well_framed_properties_decode(payload: bytes) -> None:
    class_id, size, props = decode_content_header(payload)
    assert class_id == 60
    assert size == struct.unpack_from(">Q", payload, 4)[0]
    # every shortstr comes back byte for byte; re-encoding a header without a table reproduces the frame
    if props.headers is None:
        assert encode_content_header(size, props) == payload


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=120))
def test_malformed_headers_raise_only_remote_protocol_error(tail: bytes) -> None:
    try:
        decode_content_header(_header(struct.unpack(">H", tail[:2])[0] if len(tail) >= 2 else 0, tail[2:]))
    except RemoteProtocolError:
        pass


def _deliver_with_header(header_payload: bytes, body: bytes, tag: int) -> bytes:
    deliver = method(1, "basic.deliver", "ctag", tag, False, "ex", "rk")
    return (
        deliver
        + encode_frame(
            FRAME_HEADER, 1, header_payload[:4] + struct.pack(">Q", len(body)) + header_payload[12:], 2**31
        )
        + encode_frame(3, 1, body, 2**31)
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(well_framed_headers(), st.binary(min_size=1, max_size=50))
def test_connection_keeps_frame_sync_after_a_foreign_message(header_payload: bytes, body: bytes) -> None:
    conn = open_connection()
    open_channel(conn)
    good = BasicProperties(content_type="application/json", message_id="m2")
    stream = _deliver_with_header(header_payload, body, 1) + content(
        1, "basic.deliver", ("ctag", 2, False, "ex", "rk"), b'"good"', good
    )
    conn.receive_data(stream)
    events: list[Any] = [e for e in drain(conn) if isinstance(e, Deliver)]
    assert [(e.delivery_tag, e.body) for e in events] == [(1, body), (2, b'"good"')]
    assert events[1].properties == good
