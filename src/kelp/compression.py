"""Body compression, named by method and carried in the message's ``compression`` header as a content type.

============ ======================== =====================
method       content type (header)    aliases
============ ======================== =====================
``zlib``     ``application/x-gzip``   ``gzip``
``bz2``      ``application/x-bz2``    ``bzip2``
``lzma``     ``application/x-lzma``   ``xz``
``brotli``   ``application/x-brotli`` (``kelp[brotli]``)
``zstd``     ``application/zstd``     ``zstandard`` (``kelp[zstd]``)
============ ======================== =====================

These match Kombu's content types, so the two interoperate; ``zlib`` writes the zlib format (as Kombu does)
and reads zlib or gzip. Every lookup takes a method name, an alias or a content type.

**Bounded decompression.** A few kilobytes can inflate to gigabytes, so :func:`decompress` never produces
more than :data:`max_size` bytes (or its ``max_size`` argument): the built-in codecs decompress
incrementally and stop with :class:`~kelp.exceptions.DecodeError` as soon as the output would exceed the
limit. A decompressor you :func:`register` cannot be interrupted; its output is checked afterwards.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from kelp.exceptions import DecodeError, EncodeError, KelpError, SerializerNotInstalled

__all__ = [
    "compress",
    "decompress",
    "encoders",
    "get_decoder",
    "get_encoder",
    "max_size",
    "register",
]

#: The largest body :func:`decompress` produces unless told otherwise (bytes). Assign to change it.
max_size: int = 256 * 1024 * 1024

Compressor = Callable[[bytes], bytes]
Decompressor = Callable[[bytes], bytes]
_Bounded = Callable[[bytes, int], bytes]


class _Codec(NamedTuple):
    name: str
    content_type: str
    compress: Compressor
    decompress: _Bounded
    missing: str | None  # an install hint when the library is absent


_codecs: dict[str, _Codec] = {}  # by name, alias and content type
_names: list[str] = []  # registered method names, in order


def _too_big(limit: int) -> DecodeError:
    return DecodeError(f"decompressed body exceeds the limit of {limit} bytes (kelp.compression.max_size)")


def _checked(decompressor: Decompressor) -> _Bounded:
    def bounded(body: bytes, limit: int) -> bytes:
        out = decompressor(body)
        if len(out) > limit:
            raise _too_big(limit)
        return out

    return bounded


def _install(codec: _Codec, aliases: Iterable[str]) -> None:
    for key in (codec.name, codec.content_type, *aliases):
        _codecs[key] = codec
    if codec.name not in _names:
        _names.append(codec.name)


def register(
    name: str,
    encoder: Compressor,
    decoder: Decompressor,
    content_type: str,
    aliases: Iterable[str] = (),
) -> None:
    """Register (or replace) a compression method, reachable by ``name``, ``content_type`` and ``aliases``.

    ``encoder`` compresses a body and ``decoder`` decompresses one; ``decoder`` runs to completion before its
    output is measured against :data:`max_size`, so it should refuse absurd inputs itself if it can.
    """
    _install(_Codec(name, content_type, encoder, _checked(decoder), None), aliases)


def encoders() -> list[str]:
    """The content types of the compression methods that can be used here (whose libraries are installed),
    as Kombu's ``encoders()`` lists them; each also works as the method's name in :func:`compress`."""
    return [_codecs[name].content_type for name in _installed()]


def _installed() -> list[str]:
    return [name for name in _names if _codecs[name].missing is None]


def _find(method: str, error: type[KelpError]) -> _Codec:
    if not isinstance(method, str):  # a header set by a foreign producer can hold anything
        raise error(f"compression method must be a string, got {type(method).__name__} {method!r:.40}")
    codec = _codecs.get(method) or _codecs.get(method.lower())
    if codec is None:
        raise error(f"unknown compression method {method!r}; available: {', '.join(_installed())}")
    if codec.missing is not None:
        raise SerializerNotInstalled(f"compression {codec.name!r} is not available: {codec.missing}")
    return codec


def get_encoder(t: str) -> tuple[Compressor, str]:
    """``(compressor, content_type)`` for a method name, alias or content type ``t``.

    Raises :class:`EncodeError` for an unknown method, :class:`SerializerNotInstalled` if its library is
    missing.
    """
    codec = _find(t, EncodeError)
    return codec.compress, codec.content_type


def get_decoder(t: str) -> Decompressor:
    """The bounded decompressor for a content type (or method name or alias) ``t``; honours :data:`max_size`.

    Raises :class:`DecodeError` for an unknown type, :class:`SerializerNotInstalled` if its library is
    missing.
    """
    codec = _find(t, DecodeError)
    return lambda body: _run(codec, body, max_size)


def compress(body: bytes, content_type: str) -> tuple[bytes, str]:
    """Compress ``body`` by the method ``content_type`` names (a content type, method name or alias); return
    the compressed bytes and the content type for the ``compression`` header.

    Raises :class:`EncodeError` for an unknown method or a compressor failure.
    """
    codec = _find(content_type, EncodeError)
    try:
        return codec.compress(body), codec.content_type
    except KelpError:
        raise
    except Exception as exc:
        raise EncodeError(f"{codec.name} compression failed: {exc}") from exc


def decompress(body: bytes, content_type: str, max_size: int | None = None) -> bytes:
    """Decompress ``body`` compressed as ``content_type`` (the ``compression`` header).

    Raises :class:`DecodeError` for an unknown type, a corrupt or truncated body, or output beyond
    ``max_size`` (default: the module's :data:`max_size`).
    """
    codec = _find(content_type, DecodeError)
    return _run(codec, body, _module_max_size() if max_size is None else max_size)


def _module_max_size() -> int:
    return max_size


def _run(codec: _Codec, body: bytes, limit: int) -> bytes:
    try:
        return codec.decompress(bytes(body), limit)
    except KelpError:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt {codec.name} body: {exc}") from exc


# --- incremental, bounded decompressors ----------------------------------------------------------------


def _zlib_decompress(body: bytes, limit: int) -> bytes:
    stream = zlib.decompressobj(wbits=47)  # 32 + 15: zlib or gzip header, detected
    out = stream.decompress(body, limit + 1)
    if len(out) > limit:
        raise _too_big(limit)
    if not stream.eof:
        raise DecodeError("truncated zlib body")
    return out


def _stream_decompress(new: Callable[[], Any], body: bytes, limit: int) -> bytes:
    """For bz2/lzma decompressor objects (``decompress(data, max_length)``, ``eof``, ``needs_input``,
    ``unused_data``). Concatenated streams are read in turn; trailing garbage after a complete stream is
    ignored, as :func:`bz2.decompress` and :func:`lzma.decompress` do."""
    out = bytearray()
    stream = new()
    data = body
    finished_one = False
    while True:
        try:
            chunk = stream.decompress(data, limit + 1 - len(out))
        except Exception:
            if finished_one:
                break
            raise
        out += chunk
        if len(out) > limit:
            raise _too_big(limit)
        data = b""
        if stream.eof:
            finished_one = True
            data = stream.unused_data
            if not data:
                break
            stream = new()
        elif stream.needs_input:
            raise DecodeError("truncated compressed body")
        elif not chunk:
            raise DecodeError("decompressor made no progress")
    return bytes(out)


def _register_stdlib() -> None:
    _install(_Codec("zlib", "application/x-gzip", zlib.compress, _zlib_decompress, None), ("gzip", "zlib"))
    try:
        import bz2
    except ImportError:  # Python built without it
        _install(_Codec("bz2", "application/x-bz2", _absent, _absent2, "Python was built without bz2"), ())
    else:
        bz2_codec = _Codec(
            "bz2",
            "application/x-bz2",
            bz2.compress,
            lambda body, limit: _stream_decompress(bz2.BZ2Decompressor, body, limit),
            None,
        )
        _install(bz2_codec, ("bzip2",))
    try:
        import lzma
    except ImportError:
        _install(_Codec("lzma", "application/x-lzma", _absent, _absent2, "Python was built without lzma"), ())
    else:
        lzma_codec = _Codec(
            "lzma",
            "application/x-lzma",
            lzma.compress,
            lambda body, limit: _stream_decompress(lzma.LZMADecompressor, body, limit),
            None,
        )
        _install(lzma_codec, ("xz",))


def _absent(body: bytes) -> bytes:
    raise AssertionError("unreachable: a missing codec is refused before use")


def _absent2(body: bytes, limit: int) -> bytes:
    raise AssertionError("unreachable: a missing codec is refused before use")


def _register_brotli() -> None:
    try:
        import brotli
    except ImportError:
        _install(_Codec("brotli", "application/x-brotli", _absent, _absent2, "pip install kelp[brotli]"), ())
        return

    def brotli_decompress(body: bytes, limit: int) -> bytes:
        stream = brotli.Decompressor()
        try:
            chunk = stream.process(body, output_buffer_limit=limit + 1)
        except TypeError:  # brotli < 1.2 cannot bound a call; the result is still checked below
            chunk = stream.process(body)
        out = bytearray(chunk)
        while len(out) <= limit and not stream.is_finished():
            if stream.can_accept_more_data():
                raise DecodeError("truncated brotli body")
            chunk = stream.process(b"", output_buffer_limit=limit + 1 - len(out))
            if not chunk:
                raise DecodeError("brotli decompressor made no progress")
            out += chunk
        if len(out) > limit:
            raise _too_big(limit)
        return bytes(out)

    _install(_Codec("brotli", "application/x-brotli", brotli.compress, brotli_decompress, None), ())


def _register_zstd() -> None:
    try:
        import zstandard
    except ImportError:
        _install(
            _Codec("zstd", "application/zstd", _absent, _absent2, "pip install kelp[zstd]"), ("zstandard",)
        )
        return

    def zstd_compress(body: bytes) -> bytes:
        return bytes(zstandard.ZstdCompressor().compress(body))

    def zstd_decompress(body: bytes, limit: int) -> bytes:
        declared = zstandard.frame_content_size(body)  # -1 when the frame does not say
        if declared > limit:
            raise _too_big(limit)
        # zstandard has no output limit per call, so feed the input in steps small enough that one step
        # cannot inflate far past what is left of the limit (a zstd block turns >= 3 input bytes into at
        # most 128 KiB of output).
        out = bytearray()
        pending = body
        frames = 0
        while pending:  # one frame per turn; concatenated frames are read in turn
            stream = zstandard.ZstdDecompressor().decompressobj()
            data = memoryview(pending)
            pending = b""
            while data and not stream.eof:
                step = max(16, (limit - len(out)) // 65536)
                try:
                    out += stream.decompress(data[:step].tobytes())
                except zstandard.ZstdError:
                    if frames:  # trailing garbage after a complete frame is ignored, as bz2/lzma do
                        return bytes(out)
                    raise
                data = data[step:]
                if len(out) > limit:
                    raise _too_big(limit)
            if not stream.eof:
                raise DecodeError("truncated zstd body")
            frames += 1
            pending = stream.unused_data + data.tobytes()
        return bytes(out)

    _install(_Codec("zstd", "application/zstd", zstd_compress, zstd_decompress, None), ("zstandard",))


_register_stdlib()
_register_brotli()
_register_zstd()
