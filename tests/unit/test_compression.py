from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from kelp import compression
from kelp.compression import compress, decompress, encoders, get_decoder, get_encoder
from kelp.exceptions import DecodeError, EncodeError, SerializerNotInstalled

METHODS = {
    "zlib": "application/x-gzip",
    "bz2": "application/x-bz2",
    "lzma": "application/x-lzma",
    "brotli": "application/x-brotli",
    "zstd": "application/zstd",
}
ALIASES = {"gzip": "zlib", "bzip2": "bz2", "xz": "lzma", "zstandard": "zstd", "zlib": "zlib"}


@pytest.fixture(autouse=True)
def _restore_registry() -> Iterator[None]:
    codecs, names, limit = dict(compression._codecs), list(compression._names), compression.max_size
    yield
    compression._codecs.clear()
    compression._codecs.update(codecs)
    compression._names[:] = names
    compression.max_size = limit


def test_encoders_lists_installed_methods() -> None:
    # Content types, as Kombu's encoders() returns them.
    assert encoders() == list(METHODS.values())


@pytest.mark.parametrize(("method", "content_type"), METHODS.items())
def test_round_trip_and_content_type(method: str, content_type: str) -> None:
    body = b"hello world " * 100
    compressed, header = compress(body, method)
    assert header == content_type
    assert len(compressed) < len(body)
    assert decompress(compressed, header) == body
    assert decompress(compressed, method) == body  # a name works where a content type is expected
    assert get_decoder(header)(compressed) == body
    compressor, encoder_type = get_encoder(method)
    assert encoder_type == content_type
    assert decompress(compressor(body), content_type) == body


@pytest.mark.parametrize(("alias", "method"), ALIASES.items())
def test_aliases(alias: str, method: str) -> None:
    compressed, header = compress(b"data", alias)
    assert header == METHODS[method]
    assert decompress(compressed, alias) == b"data"


def test_interoperates_with_the_stdlib_formats() -> None:
    body = b"payload" * 50
    assert decompress(zlib.compress(body), "application/x-gzip") == body
    assert decompress(gzip.compress(body), "application/x-gzip") == body  # gzip header accepted too
    assert zlib.decompress(compress(body, "zlib")[0]) == body  # zlib format, as Kombu writes
    assert decompress(bz2.compress(body), "application/x-bz2") == body
    assert decompress(lzma.compress(body, format=lzma.FORMAT_ALONE), "application/x-lzma") == body
    assert decompress(brotli.compress(body), "application/x-brotli") == body
    assert decompress(zstandard.ZstdCompressor().compress(body), "application/zstd") == body


@pytest.mark.parametrize("method", ["bz2", "lzma", "zstd"])
def test_concatenated_streams(method: str) -> None:
    first, header = compress(b"one,", method)
    second, _ = compress(b"two", method)
    assert decompress(first + second, header) == b"one,two"


def test_unknown_method() -> None:
    with pytest.raises(EncodeError, match="unknown compression method 'snappy'"):
        compress(b"x", "snappy")
    with pytest.raises(DecodeError, match="unknown compression method 'application/x-snappy'"):
        decompress(b"x", "application/x-snappy")
    with pytest.raises(EncodeError):
        get_encoder("snappy")
    with pytest.raises(DecodeError):
        get_decoder("snappy")


@pytest.mark.parametrize("method", list(METHODS))
def test_corrupt_and_truncated_bodies(method: str) -> None:
    compressed, header = compress(bytes(range(256)) * 40, method)
    with pytest.raises(DecodeError):
        decompress(b"\x00garbage" + compressed, header)
    with pytest.raises(DecodeError):
        decompress(compressed[: len(compressed) // 2], header)
    with pytest.raises(DecodeError):
        decompress(b"", header)


@pytest.mark.parametrize("method", list(METHODS))
def test_zip_bomb_is_bounded(method: str) -> None:
    bomb, header = compress(b"\x00" * (8 * 1024 * 1024), method)
    assert len(bomb) < 64 * 1024
    with pytest.raises(DecodeError, match="exceeds the limit of 1048576 bytes"):
        decompress(bomb, header, max_size=1024 * 1024)
    compression.max_size = 4096  # the module setting is read at call time
    with pytest.raises(DecodeError, match="exceeds the limit of 4096 bytes"):
        decompress(bomb, header)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        get_decoder(header)(bomb)
    assert decompress(compress(b"a" * 4096, method)[0], header) == b"a" * 4096  # exactly the limit is fine


def test_zstd_bomb_without_declared_size_is_bounded() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * (64 * 1024 * 1024))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decompress(bomb, "zstd", max_size=1024 * 1024)


def test_register_custom_method() -> None:
    def reverse(body: bytes) -> bytes:
        return body[::-1]

    compression.register("reverse", reverse, reverse, "application/x-reverse", aliases=("rev",))
    assert "application/x-reverse" in encoders()
    assert compress(b"abc", "rev") == (b"cba", "application/x-reverse")
    assert decompress(b"cba", "application/x-reverse") == b"abc"
    with pytest.raises(DecodeError, match="exceeds the limit"):  # checked after the fact
        decompress(b"abcdef", "reverse", max_size=3)


def test_failures_are_wrapped() -> None:
    def boom(body: bytes) -> bytes:
        raise RuntimeError("boom")

    compression.register("boom", boom, boom, "application/x-boom")
    with pytest.raises(EncodeError, match="boom") as enc:
        compress(b"x", "boom")
    assert isinstance(enc.value.__cause__, RuntimeError)
    with pytest.raises(DecodeError, match="boom") as dec:
        decompress(b"x", "boom")
    assert isinstance(dec.value.__cause__, RuntimeError)


def test_missing_library_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("brotli", "zstandard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    compression._register_brotli()
    compression._register_zstd()
    assert encoders() == ["application/x-gzip", "application/x-bz2", "application/x-lzma"]
    with pytest.raises(SerializerNotInstalled, match=r"pip install kelp\[brotli\]"):
        compress(b"x", "brotli")
    with pytest.raises(SerializerNotInstalled, match=r"pip install kelp\[zstd\]"):
        decompress(b"x", "application/zstd")
    with pytest.raises(SerializerNotInstalled):
        get_encoder("zstandard")


@given(st.binary(max_size=4096), st.sampled_from(sorted(METHODS)))
def test_round_trip_property(body: bytes, method: str) -> None:
    compressed, header = compress(body, method)
    assert decompress(compressed, header) == body
    assert decompress(compressed, header, max_size=len(body)) == body
    if body:
        with pytest.raises(DecodeError, match="exceeds the limit"):
            decompress(compressed, header, max_size=len(body) - 1)


def _stream_bomb(compressor: Any, size: int) -> bytes:
    chunk = b"\x00" * (1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize(
    ("header", "make"),
    [
        ("application/x-gzip", lambda: zlib.compressobj(9)),
        ("application/zstd", lambda: zstandard.ZstdCompressor(write_content_size=False).compressobj()),
    ],
)
def test_large_bomb_uses_bounded_memory(header: str, make: Any) -> None:
    import tracemalloc

    bomb = _stream_bomb(make(), 128 * 1024 * 1024)  # 128 MiB of output from a small body
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="exceeds the limit"):
            decompress(bomb, header, max_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # never inflated anywhere near 128 MiB
