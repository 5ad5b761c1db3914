"""Serializers: message bodies to bytes and back, with an accept list that keeps untrusted content undecoded.

The names follow Kombu's ``kombu.serialization`` so existing code ports by changing the import.

Built in:

=========== ============================== ========== ==================================================
name        content type                   encoding   notes
=========== ============================== ========== ==================================================
``json``    ``application/json``           utf-8      the default; see "JSON" below
``msgpack`` ``application/x-msgpack``      binary     needs ``pip install kelp[msgpack]``
``yaml``    ``application/x-yaml``         utf-8      safe loader and dumper only; ``kelp[yaml]``
``pickle``  ``application/x-python-serialize`` binary ``pickle.DEFAULT_PROTOCOL``
``raw``     ``application/data``           binary     ``bytes`` pass through; ``str`` become
            / ``text/plain``               / utf-8    ``text/plain`` in UTF-8
=========== ============================== ========== ==================================================

**Accept rules.** Decoding pickle runs code chosen by whoever wrote the payload, and YAML and msgpack are
refused by default too (as in Kombu's insecure list). :func:`loads` checks the content type *before* any
decoder runs: by default only JSON and the raw types (``application/data``, ``application/text``,
``text/plain``, ``application/octet-stream``) are decoded; anything else raises
:class:`~kelp.exceptions.ContentDisallowed`. An explicit ``accept`` (names or content types) replaces the
default list; the raw types are always accepted because they are returned as bytes or text without
decoding. :func:`enable_insecure_serializers` widens the default list for the whole process. A serializer
you :func:`register` is not accepted by default either: name it in ``accept`` or call
``registry.enable(name)``.

**JSON.** Encoded with the stdlib encoder, compact separators, non-ASCII kept as UTF-8. Values JSON cannot
express are converted one way, to what a consumer in any language can read: ``datetime``, ``date`` and
``time`` to ISO 8601 strings (``isoformat()``), ``Decimal`` to its exact decimal string, ``UUID`` to its
canonical string, ``bytes`` to a string when they are UTF-8 text (other bytes raise
:class:`~kelp.exceptions.EncodeError`: send them raw or with msgpack), and any object with a ``__json__()``
method to what that returns. Decoding is plain JSON: these values come back as strings.
"""

from __future__ import annotations

import datetime
import decimal
import importlib
import json
import pickle
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final, NamedTuple, TypeAlias

from kelp.exceptions import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    KelpError,
    SerializerNotInstalled,
)

__all__ = [
    "TRUSTED_CONTENT",
    "SerializerRegistry",
    "disable_insecure_serializers",
    "dumps",
    "enable_insecure_serializers",
    "loads",
    "prepare_accept_content",
    "register",
    "registry",
    "unregister",
]

Encoder: TypeAlias = Callable[[Any], bytes | str]
Decoder: TypeAlias = Callable[[bytes], Any]

#: Content types that are never decoded by code, only returned as bytes or text: always accepted.
TRUSTED_CONTENT: Final = frozenset(
    {"application/data", "application/text", "text/plain", "application/octet-stream"}
)

#: Encodings that mean "these bytes are not text".
_BINARY_ENCODINGS: Final = frozenset({"binary", "ascii-8bit"})


class _Codec(NamedTuple):
    content_type: str
    content_encoding: str
    encoder: Encoder


def _canonical_type(content_type: str) -> str:
    """``Application/JSON; charset=utf-8`` -> ``application/json``."""
    return content_type.partition(";")[0].strip().lower()


class SerializerRegistry:
    """Serializers by name and by content type, plus the content types decoded when no accept list is given.

    ``name_to_type`` and ``type_to_name`` map between the two; ``default_serializer`` is used by
    :meth:`dumps` for bodies that are not already ``bytes`` or ``str``.
    """

    def __init__(self) -> None:
        self._encoders: dict[str, _Codec] = {}
        self._decoders: dict[str, Decoder] = {}
        self.name_to_type: dict[str, str] = {}
        self.type_to_name: dict[str, str] = {}
        self._default = "json"
        self._allowed: set[str] = set()

    # -- registration ------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        encoder: Encoder | None,
        decoder: Decoder | None,
        content_type: str,
        content_encoding: str = "utf-8",
    ) -> None:
        """Register (or replace) a serializer.

        ``encoder(obj)`` returns ``bytes``, or ``str`` which is encoded with ``content_encoding``.
        ``decoder(payload)`` receives the payload bytes as received. Either may be None for a one-way
        serializer. Registering does not accept the content type by default: see :meth:`enable`.
        """
        if encoder is not None:
            self._encoders[name] = _Codec(content_type, content_encoding, encoder)
        if decoder is not None:
            self._decoders[content_type] = decoder
        self.name_to_type[name] = content_type
        self.type_to_name[content_type] = name

    def unregister(self, name: str) -> None:
        """Remove a serializer; :class:`SerializerNotInstalled` if there is none by that name."""
        try:
            content_type = self.name_to_type.pop(name)
        except KeyError:
            raise SerializerNotInstalled(f"no serializer named {name!r} is registered") from None
        self._encoders.pop(name, None)
        self._decoders.pop(content_type, None)
        self.type_to_name.pop(content_type, None)

    @property
    def default_serializer(self) -> str:
        """The serializer :meth:`dumps` uses when none is given. Setting it checks the name exists."""
        return self._default

    @default_serializer.setter
    def default_serializer(self, name: str) -> None:
        if name != "raw" and name not in self._encoders:
            raise SerializerNotInstalled(f"no serializer named {name!r} is registered")
        self._default = name

    def _set_default_serializer(self, name: str) -> None:
        self.default_serializer = name

    # -- the default accept list -------------------------------------------------------------------------

    def _content_type(self, name_or_type: str) -> str:
        if name_or_type in self.name_to_type:
            return self.name_to_type[name_or_type]
        if "/" in name_or_type:
            return _canonical_type(name_or_type)
        raise SerializerNotInstalled(f"no serializer named {name_or_type!r} is registered")

    def enable(self, name: str) -> None:
        """Decode this serializer (name or content type) when a consumer gives no accept list."""
        self._allowed.add(self._content_type(name))

    def disable(self, name: str) -> None:
        """Stop decoding this serializer (name or content type) when a consumer gives no accept list."""
        self._allowed.discard(self._content_type(name))

    def accepted_by_default(self) -> frozenset[str]:
        """The content types :meth:`loads` decodes when ``accept`` is None, beside the trusted raw types."""
        return frozenset(self._allowed)

    # -- encoding ----------------------------------------------------------------------------------------

    def dumps(self, data: Any, serializer: str | None = None) -> tuple[str, str, bytes]:
        """Serialize ``data``; return ``(content_type, content_encoding, payload)``, payload always bytes.

        With no ``serializer``, ``bytes`` (and other buffers) pass through as ``application/data`` /
        ``binary`` and ``str`` as ``text/plain`` / ``utf-8``; anything else uses the default serializer.
        ``serializer="raw"`` does the same pass-through for bytes and str (both as ``application/data``, str
        in ``utf-8``) and refuses other values.
        Raises :class:`EncodeError` if the encoder fails, :class:`SerializerNotInstalled` for an unknown
        name or a serializer whose library is missing.
        """
        if serializer is None or serializer == "raw":
            if isinstance(data, bytes):
                return "application/data", "binary", data
            if isinstance(data, bytearray | memoryview):
                return "application/data", "binary", bytes(data)
            if isinstance(data, str):
                # Kombu's raw serializer labels text application/data too; only the default says text/plain.
                content_type = "application/data" if serializer == "raw" else "text/plain"
                return content_type, "utf-8", _encode_text(data, "utf-8")
            if serializer == "raw":
                raise EncodeError(f"the raw serializer takes bytes or str, not {type(data).__name__}")
            serializer = self._default
            if serializer == "raw":
                raise EncodeError(f"the raw serializer takes bytes or str, not {type(data).__name__}")
        try:
            content_type, content_encoding, encoder = self._encoders[serializer]
        except KeyError:
            raise SerializerNotInstalled(f"no serializer named {serializer!r} is registered") from None
        try:
            payload = encoder(data)
        except KelpError:
            raise
        except Exception as exc:
            raise EncodeError(f"{serializer} could not encode a {type(data).__name__}: {exc}") from exc
        if isinstance(payload, str):
            payload = _encode_text(payload, content_encoding)
        return content_type, content_encoding, bytes(payload)

    # -- decoding ----------------------------------------------------------------------------------------

    def loads(
        self,
        data: bytes | bytearray | memoryview | str,
        content_type: str | None,
        content_encoding: str | None,
        accept: Collection[str] | None = None,
        force: bool = False,
    ) -> Any:
        """Deserialize a payload; the content type is checked against the accept list first.

        ``accept`` is a collection of serializer names and/or content types; None means the registry's
        default list (JSON unless widened). A payload whose type is not accepted raises
        :class:`ContentDisallowed` without any decoder running. ``force=True`` skips the default list (only
        for payloads you produced yourself); an explicit ``accept`` is always enforced, as in Kombu. A
        missing content type means raw bytes. With no decoder for the type (or an empty payload) the bytes
        are returned as they are, or as ``str`` if ``content_encoding`` names a text encoding or the type
        is ``text/*``. A failing decoder raises :class:`DecodeError` with the original error chained.
        """
        ctype = content_type or "application/data"
        decoder = self._decoders.get(ctype)
        if decoder is None and ctype not in TRUSTED_CONTENT:
            ctype = _canonical_type(ctype)
            decoder = self._decoders.get(ctype)
        if ctype not in TRUSTED_CONTENT:
            if accept is None:
                if not force and ctype not in self._allowed:
                    raise self._disallowed(ctype, "is not accepted by default")
            elif ctype not in accept and self.type_to_name.get(ctype, ctype) not in accept:
                raise self._disallowed(ctype, "is not in the accept list")
        if not isinstance(data, bytes):
            data = _encode_text(data, content_encoding or "utf-8") if isinstance(data, str) else bytes(data)
        if decoder is None or not data:
            return _raw(data, ctype, content_encoding)
        try:
            return decoder(data)
        except KelpError:
            raise
        except Exception as exc:
            name = self.type_to_name.get(ctype, ctype)
            raise DecodeError(f"{name} could not decode a {len(data)}-byte payload: {exc}") from exc

    def _disallowed(self, content_type: str, why: str) -> ContentDisallowed:
        name = self.type_to_name.get(content_type)
        label = f"{content_type!r} ({name})" if name else repr(content_type)
        allow = name or content_type
        return ContentDisallowed(
            f"refusing to deserialize content of type {label}: it {why}. If every producer is trusted, "
            f"accept it with accept=[{allow!r}] on the consumer, or for the whole process with "
            f"kelp.serialization.enable_insecure_serializers([{allow!r}])"
        )


def _encode_text(text: str, encoding: str) -> bytes:
    try:
        return text.encode("latin-1" if encoding in _BINARY_ENCODINGS else encoding)
    except (UnicodeError, LookupError) as exc:
        raise EncodeError(f"could not encode text as {encoding}: {exc}") from exc


def _raw(data: bytes, content_type: str, content_encoding: str | None) -> bytes | str:
    encoding: str
    if content_encoding and content_encoding not in _BINARY_ENCODINGS:
        encoding = content_encoding
    elif content_type.startswith("text/"):
        encoding = "utf-8"
    else:
        return data
    try:
        # bytes.decode accepts text encodings only, so a hostile content_encoding such as "zlib" or
        # "base64" cannot make this decompress or transform the payload.
        return data.decode(encoding)
    except (UnicodeError, LookupError) as exc:
        raise DecodeError(f"{content_type} payload is not valid {encoding}: {exc}") from exc


# --- built-in serializers ------------------------------------------------------------------------------


def _primitive(obj: Any) -> Any:
    """What JSON (and msgpack) get for values they cannot express; see the module docstring."""
    if isinstance(obj, datetime.date | datetime.time):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal | uuid.UUID):
        return str(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError(
                "bytes that are not UTF-8 text cannot be sent as JSON; send them raw or use msgpack"
            ) from None
    method = getattr(obj, "__json__", None)
    if callable(method):
        return method()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_encoder() -> Callable[[Any], bytes]:
    """Compact JSON as UTF-8 bytes. Where the C accelerator is present, one encoder is built once and
    reused (``JSONEncoder.encode`` builds a new one per call, a third of the cost of a small message)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_primitive).encode
        return lambda value: encoder(value).encode("utf-8")
    # markers=None: no circular-reference bookkeeping; a cycle ends in RecursionError (an EncodeError).
    one_shot = make(None, _primitive, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    join = "".join

    def encode(value: Any) -> bytes:
        return join(one_shot(value, 0)).encode("utf-8")

    return encode


_json_encode = _json_encoder()
_json_decoder = json.JSONDecoder()
_json_decode = _json_decoder.decode
_json_scan: Callable[[str, int], tuple[Any, int]] = _json_decoder.scan_once  # type: ignore[attr-defined]


def _json_loads(payload: bytes) -> Any:
    # RFC 8259 JSON is UTF-8; decoding first and calling the decoder skips json.loads' encoding sniffing.
    text = payload.decode("utf-8")
    # The scanner alone parses a document with no surrounding whitespace (what encoders write) without
    # decode()'s two regular-expression matches; anything else takes the full path (same result/error).
    try:
        value, end = _json_scan(text, 0)
    except StopIteration:
        return _json_decode(text)
    if end != len(text):
        return _json_decode(text)
    return value


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL)


Codec: TypeAlias = tuple[Callable[[Any], Any], Callable[[bytes], Any]]


def _lazy_codec(module: str, make: Callable[[Any], Codec], hint: str) -> Codec:
    """An encoder and a decoder importing ``module`` on first use (SerializerNotInstalled if absent)."""
    loaded: list[Codec] = []

    def codec() -> Codec:
        if not loaded:
            try:
                library = importlib.import_module(module)
            except ImportError:
                raise SerializerNotInstalled(
                    f"the {module} serializer needs a library that is not installed: {hint}"
                ) from None
            loaded.append(make(library))
        return loaded[0]

    def encode(obj: Any) -> Any:
        return codec()[0](obj)

    def decode(payload: bytes) -> Any:
        return codec()[1](payload)

    return encode, decode


def _msgpack_codec(msgpack: Any) -> Codec:
    def dumps(obj: Any) -> bytes:
        return bytes(msgpack.packb(obj, use_bin_type=True, default=_primitive))

    def loads(payload: bytes) -> Any:
        return msgpack.unpackb(payload, raw=False)

    return dumps, loads


def _yaml_codec(yaml: Any) -> Codec:
    # Only the safe loader and dumper: plain data, never tags that construct arbitrary objects.
    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    safe_dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    def dumps(obj: Any) -> str:
        return str(yaml.dump(obj, Dumper=safe_dumper, allow_unicode=True))

    def loads(payload: bytes) -> Any:
        return yaml.load(payload, Loader=safe_loader)

    return dumps, loads


def _register_builtins(reg: SerializerRegistry) -> None:
    reg.register("json", _json_encode, _json_loads, "application/json", "utf-8")
    reg.register("pickle", _pickle_dumps, pickle.loads, "application/x-python-serialize", "binary")

    # The optional libraries are imported on first use, so ``import kelp`` stays light.
    msgpack_dumps, msgpack_loads = _lazy_codec("msgpack", _msgpack_codec, "pip install kelp[msgpack]")
    reg.register("msgpack", msgpack_dumps, msgpack_loads, "application/x-msgpack", "binary")
    yaml_dumps, yaml_loads = _lazy_codec("yaml", _yaml_codec, "pip install kelp[yaml]")
    reg.register("yaml", yaml_dumps, yaml_loads, "application/x-yaml", "utf-8")

    reg.enable("json")


#: The process-wide registry the module-level functions use.
registry = SerializerRegistry()
_register_builtins(registry)

register = registry.register
unregister = registry.unregister
dumps = registry.dumps
loads = registry.loads


def prepare_accept_content(names: Iterable[str] | None) -> set[str] | None:
    """Map serializer names (``"json"``) and content types to the set of content types; None stays None.

    An unknown name raises :class:`SerializerNotInstalled`; a string with a ``/`` is taken as a content type.
    """
    if names is None:
        return None
    return {registry._content_type(name) for name in names}


def enable_insecure_serializers(choices: Iterable[str] = ("pickle", "yaml", "msgpack")) -> None:
    """Decode these serializers for every consumer that gives no accept list. Only if producers are trusted:
    a pickle payload can run any code on the consumer."""
    for name in choices:
        registry.enable(name)


def disable_insecure_serializers(allowed: Iterable[str] | None = ("json",)) -> None:
    """Decode only ``allowed`` (plus the raw types) for consumers that give no accept list."""
    registry._allowed.clear()
    for name in allowed or ():
        registry.enable(name)
