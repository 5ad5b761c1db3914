from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp.amqp import BasicProperties, LocalProtocolError, RemoteProtocolError
from kelp.amqp._properties import decode_content_header, encode_content_header
from kelp.amqp._spec import (
    METHODS,
    METHODS_BY_KEY,
    METHODS_BY_NAME,
    MethodDef,
    decode_basic_ack,
    decode_basic_deliver,
    decode_method,
    encode_basic_ack,
    encode_basic_publish,
    encode_method,
)

SAMPLES: dict[str, list[Any]] = {
    "bit": [True, False],
    "octet": [0, 255],
    "short": [0, 65535],
    "long": [0, 2**32 - 1],
    "longlong": [0, 2**64 - 1],
    "timestamp": [0, 1700000000],
    "shortstr": ["", "x" * 255, "héllo"],
    "longstr": [b"", b"\x00\xffbinary"],
    "table": [{}, {"a": 1, "nested": {"b": [True, None, "s"]}}],
}


def sample_args(method: MethodDef, variant: int) -> tuple[Any, ...]:
    args = []
    for index, (_, domain) in enumerate(method.fields):
        choices = SAMPLES[domain]
        args.append(choices[(variant + index) % len(choices)])
    return tuple(args)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_every_method_roundtrips(method: MethodDef, variant: int) -> None:
    args = sample_args(method, variant)
    payload = encode_method(method, args)
    decoded, decoded_args = decode_method(payload)
    assert decoded is method
    assert decoded_args == args


def test_spec_table_is_consistent() -> None:
    assert len(METHODS_BY_KEY) == len(METHODS) == len(METHODS_BY_NAME)
    for method in METHODS:
        for reply in method.replies:
            assert reply in METHODS_BY_NAME, (method.name, reply)
    content = {m.name for m in METHODS if m.content}
    assert content == {"basic.publish", "basic.return", "basic.deliver", "basic.get-ok"}


def test_known_wire_ids() -> None:
    assert METHODS_BY_NAME["basic.publish"].key == (60 << 16) | 40
    assert METHODS_BY_NAME["exchange.unbind-ok"].key == (40 << 16) | 51
    assert METHODS_BY_NAME["queue.unbind"].key == (50 << 16) | 50
    assert METHODS_BY_NAME["basic.nack"].key == (60 << 16) | 120
    assert METHODS_BY_NAME["confirm.select"].key == (85 << 16) | 10


def test_bits_pack_into_one_octet() -> None:
    payload = encode_method(METHODS_BY_NAME["queue.declare"], (0, "q", True, False, True, False, True, {}))
    # ids(4) ticket(2) shortstr(2) bits(1) table(4)
    assert payload[8] == 0b10101
    assert len(payload) == 13


@pytest.mark.parametrize(
    ("exchange", "routing_key", "mandatory", "immediate"),
    [("", "", False, False), ("amq.topic", "a.b.c", True, False), ("é" * 100, "r" * 255, False, True)],
)
def test_publish_fast_path_matches_generic(
    exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> None:
    generic = encode_method(
        METHODS_BY_NAME["basic.publish"], (0, exchange, routing_key, mandatory, immediate)
    )
    assert encode_basic_publish(exchange, routing_key, mandatory, immediate) == generic


def test_publish_fast_path_rejects_long_names() -> None:
    with pytest.raises(LocalProtocolError):
        encode_basic_publish("x" * 256, "", False, False)


@pytest.mark.parametrize("args", [("ctag", 1, False, "ex", "rk"), ("", 2**64 - 1, True, "", "é" * 60)])
def test_deliver_fast_path_matches_generic(args: tuple[Any, ...]) -> None:
    payload = encode_method(METHODS_BY_NAME["basic.deliver"], args)
    assert decode_basic_deliver(payload) == args
    assert decode_method(payload)[1] == args


def test_ack_fast_paths_match_generic() -> None:
    for tag, multiple in [(1, False), (2**64 - 1, True)]:
        generic = encode_method(METHODS_BY_NAME["basic.ack"], (tag, multiple))
        assert encode_basic_ack(tag, multiple) == generic
        assert decode_basic_ack(generic) == (tag, multiple)
    with pytest.raises(LocalProtocolError):
        encode_basic_ack(-1, False)
    with pytest.raises(RemoteProtocolError):
        decode_basic_ack(b"\x00\x3c\x00\x50\x00")


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x3c\x00\x3c",  # no fields at all
        b"\x00\x3c\x00\x3c\x04ctag",  # truncated after consumer tag
        encode_method(METHODS_BY_NAME["basic.deliver"], ("c", 1, False, "e", "r")) + b"!",  # trailing byte
        encode_method(METHODS_BY_NAME["basic.deliver"], ("c", 1, False, "e", "r"))[:-1],  # truncated
    ],
)
def test_deliver_fast_path_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_basic_deliver(payload)
    with pytest.raises(RemoteProtocolError):
        decode_method(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x0a",  # shorter than the ids
        b"\x00\x63\x00\x01",  # unknown class 99
        b"\x00\x0a\x00\x1e\x00",  # tune truncated
        encode_method(METHODS_BY_NAME["connection.tune"], (1, 2, 3)) + b"\x00",  # trailing
        encode_method(METHODS_BY_NAME["basic.qos"], (1, 2, True))[:-1],  # bits missing
    ],
)
def test_malformed_method_frames(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_method(payload)


def test_encode_method_validates() -> None:
    with pytest.raises(LocalProtocolError, match="takes 3 arguments"):
        encode_method(METHODS_BY_NAME["connection.tune"], (1, 2))
    with pytest.raises(LocalProtocolError, match="channel_max"):
        encode_method(METHODS_BY_NAME["connection.tune"], (70000, 2, 3))
    with pytest.raises(LocalProtocolError, match="too long"):
        encode_method(METHODS_BY_NAME["queue.purge"], (0, "q" * 300, False))


# -- content header ------------------------------------------------------------------------------------------

short = st.text(max_size=20)
properties = st.builds(
    BasicProperties,
    content_type=st.none() | short,
    content_encoding=st.none() | short,
    headers=st.none() | st.dictionaries(short, st.integers(-5, 5) | short, max_size=3),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short,
    reply_to=st.none() | short,
    expiration=st.none() | st.integers(0, 10**6).map(str),
    message_id=st.none() | short,
    timestamp=st.none() | st.integers(0, 2**64 - 1),
    type=st.none() | short,
    user_id=st.none() | short,
    app_id=st.none() | short,
    cluster_id=st.none() | short,
)


@given(properties, st.integers(0, 2**64 - 1))
def test_content_header_roundtrip(props: BasicProperties, size: int) -> None:
    payload = encode_content_header(size, props)
    assert decode_content_header(payload) == (60, size, props)


def test_content_header_flags_layout() -> None:
    payload = encode_content_header(5, BasicProperties(content_type="a", cluster_id="b"))
    assert payload[12:14] == b"\x80\x04"
    assert encode_content_header(5, None) == encode_content_header(5, BasicProperties())
    assert decode_content_header(encode_content_header(5, None))[2] == BasicProperties()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x3c\x00\x00" + b"\x00" * 6,  # truncated
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x01",  # continuation flag
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00",  # content_type flagged, missing
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00\x05ab",  # content_type truncated
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x40\x00",  # timestamp truncated
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x00!",  # trailing bytes
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x10\x00\x02!",  # trailing after delivery_mode
        b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x20\x00\x00\x00\x00\x09",  # headers past the end
    ],
)
def test_content_header_malformed(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_content_header(payload)


@pytest.mark.parametrize(
    "props",
    [
        BasicProperties(delivery_mode=256),
        BasicProperties(priority=-1),
        BasicProperties(timestamp=-1),
        BasicProperties(message_id="m" * 256),
        BasicProperties(headers={"k": object()}),  # type: ignore[dict-item]
    ],
)
def test_content_header_rejects_bad_properties(props: BasicProperties) -> None:
    with pytest.raises(LocalProtocolError):
        encode_content_header(0, props)
