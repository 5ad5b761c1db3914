from __future__ import annotations

import datetime
import decimal
import json
import pickle
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kelp import serialization
from kelp.exceptions import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    KelpError,
    SerializationError,
    SerializerNotInstalled,
)
from kelp.serialization import (
    dumps,
    loads,
    prepare_accept_content,
    registry,
)

PICKLE = "application/x-python-serialize"
YAML = "application/x-yaml"
MSGPACK = "application/x-msgpack"


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    """Tests change the process-wide registry; put it back afterwards."""
    encoders, decoders = dict(registry._encoders), dict(registry._decoders)
    name_to_type, type_to_name = dict(registry.name_to_type), dict(registry.type_to_name)
    allowed, default = set(registry._allowed), registry.default_serializer
    yield
    registry._encoders, registry._decoders = encoders, decoders
    registry.name_to_type, registry.type_to_name = name_to_type, type_to_name
    registry._allowed, registry._default = allowed, default


def test_public_names() -> None:
    assert set(serialization.__all__) >= {
        "registry",
        "register",
        "unregister",
        "dumps",
        "loads",
        "prepare_accept_content",
        "enable_insecure_serializers",
        "disable_insecure_serializers",
    }
    assert registry.name_to_type["json"] == "application/json"
    assert registry.type_to_name[PICKLE] == "pickle"
    assert registry.default_serializer == "json"


# --- dumps ---------------------------------------------------------------------------------------------


def test_raw_pass_through() -> None:
    assert dumps(b"\x00\xff") == ("application/data", "binary", b"\x00\xff")
    assert dumps(bytearray(b"ab")) == ("application/data", "binary", b"ab")
    assert dumps(memoryview(b"ab")) == ("application/data", "binary", b"ab")
    assert dumps("héllo") == ("text/plain", "utf-8", "héllo".encode())
    assert dumps(b"x", "raw") == ("application/data", "binary", b"x")
    assert dumps("x", "raw") == ("application/data", "utf-8", b"x")  # as Kombu's raw serializer
    with pytest.raises(EncodeError, match="raw serializer takes bytes or str"):
        dumps({"a": 1}, "raw")


def test_json_is_compact_utf8() -> None:
    content_type, encoding, payload = dumps({"a": [1, 2], "é": "ü"})
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert payload == '{"a":[1,2],"é":"ü"}'.encode()
    assert dumps("text", "json")[2] == b'"text"'  # an explicit serializer applies to str as well


def test_json_extended_types_one_way() -> None:
    value = {
        "dt": datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.UTC),
        "d": datetime.date(2024, 5, 6),
        "t": datetime.time(7, 8),
        "dec": decimal.Decimal("1.10"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "b": b"text",
    }
    content_type, encoding, payload = dumps(value)
    assert loads(payload, content_type, encoding) == {
        "dt": "2024-05-06T07:08:09.000010+00:00",
        "d": "2024-05-06",
        "t": "07:08:00",
        "dec": "1.10",
        "id": "12345678-1234-5678-1234-567812345678",
        "b": "text",
    }


def test_json_dunder_json_and_failures() -> None:
    class Point:
        def __json__(self) -> list[int]:
            return [1, 2]

    assert dumps(Point())[2] == b"[1,2]"
    with pytest.raises(EncodeError, match="not UTF-8") as info:
        dumps({"b": b"\xff"})
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(EncodeError, match="not JSON serializable"):
        dumps(object())
    with pytest.raises(EncodeError):
        dumps("\ud800", "json")  # a lone surrogate is not UTF-8


def test_unknown_serializer() -> None:
    with pytest.raises(SerializerNotInstalled, match="nope"):
        dumps(1, "nope")


def test_binary_serializers() -> None:
    content_type, encoding, payload = dumps({"a": b"\x00"}, "msgpack")
    assert (content_type, encoding) == (MSGPACK, "binary")
    assert loads(payload, content_type, encoding, accept=["msgpack"]) == {"a": b"\x00"}
    content_type, encoding, payload = dumps({1, 2}, "pickle")
    assert (content_type, encoding) == (PICKLE, "binary")
    assert pickle.loads(payload) == {1, 2}
    assert payload[1] == pickle.DEFAULT_PROTOCOL


# --- accept rules --------------------------------------------------------------------------------------


class _WritesFile:
    """Unpickling this runs code: it writes ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"__import__('pathlib').Path({str(self.path)!r}).write_text('pwned')",))


def test_pickle_refused_by_default_without_running_the_decoder(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    content_type, encoding, payload = dumps(_WritesFile(target), "pickle")
    calls: list[bytes] = []
    real = registry._decoders[PICKLE]

    def spy(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    registry._decoders[PICKLE] = spy

    with pytest.raises(ContentDisallowed) as info:
        loads(payload, content_type, encoding)
    message = str(info.value)
    assert PICKLE in message
    assert "enable_insecure_serializers" in message
    assert "accept=" in message
    with pytest.raises(ContentDisallowed):
        loads(payload, content_type, encoding, accept=["json"])
    with pytest.raises(ContentDisallowed):
        loads(payload, "Application/X-Python-Serialize; v=1", encoding)  # no spelling sneaks through
    assert calls == []
    assert not target.exists()

    # Control: the payload really is dangerous once accepted.
    loads(payload, content_type, encoding, accept=["pickle"])
    assert calls == [payload]
    assert target.read_text() == "pwned"


def test_yaml_and_msgpack_refused_by_default() -> None:
    for name, content_type in [("yaml", YAML), ("msgpack", MSGPACK)]:
        payload = dumps({"a": 1}, name)[2]
        with pytest.raises(ContentDisallowed, match=content_type):
            loads(payload, content_type, "utf-8")
        assert loads(payload, content_type, "utf-8", accept=[name]) == {"a": 1}
        assert loads(payload, content_type, "utf-8", accept={content_type}) == {"a": 1}


def test_explicit_accept_replaces_default() -> None:
    payload = dumps({"a": 1})[2]
    with pytest.raises(ContentDisallowed, match="not in the accept list"):
        loads(payload, "application/json", "utf-8", accept=["msgpack"])
    assert loads(payload, "application/json", "utf-8", accept=["json"]) == {"a": 1}
    with pytest.raises(ContentDisallowed):
        loads(payload, "application/json", "utf-8", accept=())
    # The raw types are always accepted: they are never decoded by code.
    assert loads(b"raw", "application/data", "binary", accept=[]) == b"raw"
    assert loads(b"raw", "text/plain", "utf-8", accept=["json"]) == "raw"
    assert loads(b"raw", "application/octet-stream", "binary", accept=[]) == b"raw"


def test_force_skips_the_check() -> None:
    payload = dumps([1], "pickle")[2]
    assert loads(payload, PICKLE, "binary", force=True) == [1]


def test_enable_and_disable_insecure_serializers() -> None:
    payload = dumps([1], "pickle")[2]
    serialization.enable_insecure_serializers()
    assert loads(payload, PICKLE, "binary") == [1]
    assert loads(dumps([1], "yaml")[2], YAML, "utf-8") == [1]
    serialization.disable_insecure_serializers()
    with pytest.raises(ContentDisallowed):
        loads(payload, PICKLE, "binary")
    assert loads(b"[1]", "application/json", "utf-8") == [1]
    serialization.disable_insecure_serializers(allowed=None)
    with pytest.raises(ContentDisallowed):
        loads(b"[1]", "application/json", "utf-8")
    assert loads(b"x", None, None) == b"x"
    serialization.enable_insecure_serializers(["json"])
    assert loads(b"[1]", "application/json", "utf-8") == [1]
    assert registry.accepted_by_default() == {"application/json"}


def test_yaml_is_safe_even_when_enabled(tmp_path: Path) -> None:
    serialization.enable_insecure_serializers(["yaml"])
    evil = b"!!python/object/apply:os.system ['touch " + str(tmp_path / "pwned").encode() + b"']"
    with pytest.raises(DecodeError) as info:
        loads(evil, YAML, "utf-8")
    assert info.value.__cause__ is not None
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DecodeError):
        loads(b"!!python/object:collections.OrderedDict {}", YAML, "utf-8")
    with pytest.raises(EncodeError):
        dumps(_WritesFile(tmp_path), "yaml")  # the safe dumper refuses arbitrary objects too
    assert loads(b"a: [1, 2]\nb: 2024-01-02\n", YAML, "utf-8") == {
        "a": [1, 2],
        "b": datetime.date(2024, 1, 2),
    }


def test_prepare_accept_content() -> None:
    assert prepare_accept_content(None) is None
    assert prepare_accept_content(["json", "application/x-custom", "pickle"]) == {
        "application/json",
        "application/x-custom",
        PICKLE,
    }
    with pytest.raises(SerializerNotInstalled, match="jsn"):
        prepare_accept_content(["jsn"])


# --- loads ---------------------------------------------------------------------------------------------


def test_decode_failures_are_chained() -> None:
    with pytest.raises(DecodeError, match="json") as info:
        loads(b"{not json", "application/json", "utf-8")
    assert isinstance(info.value.__cause__, ValueError)
    assert isinstance(info.value, SerializationError)
    with pytest.raises(DecodeError):
        loads(b"\xff\xfe[", "application/json", "utf-8")


def test_unknown_accepted_content_types() -> None:
    accept = ["application/x-thing", "text/html", "application/x-latin"]
    assert loads(b"\x00\x01", "application/x-thing", "binary", accept=accept) == b"\x00\x01"
    assert loads(b"<p>", "text/html", None, accept=accept) == "<p>"
    assert loads("é".encode("latin-1"), "application/x-latin", "latin-1", accept=accept) == "é"
    with pytest.raises(DecodeError, match="not valid"):
        loads(b"\xff", "text/html", "utf-8", accept=accept)


def test_hostile_content_encoding_is_not_a_codec() -> None:
    import zlib

    with pytest.raises(DecodeError):
        loads(zlib.compress(b"x" * 100), "application/data", "zlib")


def test_missing_content_type_and_empty_payloads() -> None:
    assert loads(b"abc", None, None) == b"abc"
    assert loads(b"abc", "", "binary") == b"abc"
    assert loads(b"", "application/json", "utf-8") == ""  # nothing to decode
    assert loads(b"", "application/data", "binary") == b""


def test_content_type_parameters_and_case() -> None:
    assert loads(b"[1]", "Application/JSON; charset=utf-8", "utf-8") == [1]


def test_loads_accepts_buffers_and_str() -> None:
    assert loads(bytearray(b"[1]"), "application/json", "utf-8") == [1]
    assert loads(memoryview(b"[1]"), "application/json", "utf-8") == [1]
    assert loads("[1]", "application/json", "utf-8") == [1]


# --- registry ------------------------------------------------------------------------------------------


def test_register_custom_serializer() -> None:
    serialization.register(
        "upper", lambda obj: str(obj).upper(), lambda data: data.decode().lower(), "application/x-upper"
    )
    content_type, encoding, payload = dumps("abc", "upper")
    assert (content_type, encoding, payload) == ("application/x-upper", "utf-8", b"ABC")
    with pytest.raises(ContentDisallowed):  # registering does not accept it by default
        loads(payload, content_type, encoding)
    assert loads(payload, content_type, encoding, accept=["upper"]) == "abc"
    registry.enable("upper")
    assert loads(payload, content_type, encoding) == "abc"
    registry.disable("upper")
    with pytest.raises(ContentDisallowed):
        loads(payload, content_type, encoding)
    serialization.unregister("upper")
    with pytest.raises(SerializerNotInstalled):
        dumps("abc", "upper")
    with pytest.raises(SerializerNotInstalled):
        serialization.unregister("upper")
    # Unregistered but accepted: returned as text.
    assert loads(payload, content_type, encoding, accept=[content_type]) == "ABC"


def test_encoder_and_decoder_errors_are_wrapped_but_kelp_errors_pass() -> None:
    def boom(_: Any) -> bytes:
        raise RuntimeError("boom")

    def not_installed(_: Any) -> bytes:
        raise SerializerNotInstalled("pip install it")

    serialization.register("boom", boom, boom, "application/x-boom")
    with pytest.raises(EncodeError, match="boom") as enc:
        dumps(1, "boom")
    assert isinstance(enc.value.__cause__, RuntimeError)
    with pytest.raises(DecodeError, match="boom") as dec:
        loads(b"x", "application/x-boom", "utf-8", accept=["boom"])
    assert isinstance(dec.value.__cause__, RuntimeError)
    serialization.register("ni", not_installed, not_installed, "application/x-ni")
    with pytest.raises(SerializerNotInstalled):
        dumps(1, "ni")
    with pytest.raises(SerializerNotInstalled):
        loads(b"x", "application/x-ni", "utf-8", accept=["ni"])


def test_default_serializer() -> None:
    registry._set_default_serializer("msgpack")
    assert dumps({"a": 1})[0] == MSGPACK
    assert dumps(b"x")[0] == "application/data"  # bytes still pass through
    registry.default_serializer = "json"
    assert dumps({"a": 1})[0] == "application/json"
    with pytest.raises(SerializerNotInstalled):
        registry.default_serializer = "nope"
    registry.default_serializer = "raw"
    with pytest.raises(EncodeError):
        dumps({"a": 1})


def test_missing_library_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes importing that module raise ImportError.
    monkeypatch.setitem(sys.modules, "msgpack", None)
    monkeypatch.setitem(sys.modules, "yaml", None)
    fresh = serialization.SerializerRegistry()
    serialization._register_builtins(fresh)
    with pytest.raises(SerializerNotInstalled, match=r"pip install kelp\[msgpack\]"):
        fresh.dumps(1, "msgpack")
    with pytest.raises(SerializerNotInstalled, match=r"pip install kelp\[yaml\]"):
        fresh.loads(b"a: 1", YAML, "utf-8", accept=["yaml"])
    with pytest.raises(ContentDisallowed):  # still refused before the missing library matters
        fresh.loads(b"\x01", MSGPACK, "binary")
    assert issubclass(SerializerNotInstalled, KelpError)


# --- round trips ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, st.sampled_from(["json", "msgpack", "yaml", "pickle"]))
def test_round_trip(value: Any, name: str) -> None:
    content_type, encoding, payload = dumps(value, name)
    assert isinstance(payload, bytes)
    assert loads(payload, content_type, encoding, accept=[name]) == value


@given(json_values | st.floats())
def test_json_text_is_the_standard_library_s(value: Any) -> None:
    """The reused C encoder writes exactly what json.dumps writes with the same options."""
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert dumps(value, "json")[2] == expected


def test_json_cycles_are_encode_errors() -> None:
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(EncodeError):
        dumps(looped, "json")
    table: dict[str, Any] = {}
    table["self"] = table
    with pytest.raises(EncodeError):
        dumps(table, "json")


@given(st.binary())
def test_bytes_round_trip(value: bytes) -> None:
    content_type, encoding, payload = dumps(value)
    assert loads(payload, content_type, encoding, accept=[]) == value


@given(st.text())
def test_text_round_trip(value: str) -> None:
    content_type, encoding, payload = dumps(value)
    assert loads(payload, content_type, encoding) == value
