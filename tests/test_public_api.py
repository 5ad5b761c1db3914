"""The public surface is deliberate: these tests pin the names ``kelp`` and ``kelp.aio`` export, and the
Kombu-compatible modules a ported program imports from."""

from __future__ import annotations

import importlib

import kelp
import kelp.aio

FACE_NAMES = {
    "Broadcast",
    "BrokerConnection",
    "Channel",
    "Connection",
    "Consumer",
    "ConsumerMixin",
    "ConsumerProducerMixin",
    "Exchange",
    "KelpError",
    "Message",
    "Producer",
    "Queue",
    "SimpleBuffer",
    "SimpleQueue",
    "binding",
    "connections",
    "disable_insecure_serializers",
    "enable_insecure_serializers",
    "eventloop",
    "maybe_declare",
    "producers",
    "uuid",
}

# Modules a Kombu program imports from (kombu.X -> kelp.X) and names it uses from each.
KOMBU_MODULES = {
    "connection": {"Connection", "Channel"},
    "entity": {"Exchange", "Queue", "binding", "PERSISTENT_DELIVERY_MODE", "TRANSIENT_DELIVERY_MODE"},
    "messaging": {"Producer", "Consumer"},
    "message": {"Message"},
    "exceptions": {
        "KombuError",
        "OperationalError",
        "ChannelError",
        "NotFound",
        "PreconditionFailed",
        "ContentDisallowed",
        "DecodeError",
        "EncodeError",
        "SerializationError",
        "MessageStateError",
        "LimitExceeded",
        "ConnectionLimitExceeded",
        "ChannelLimitExceeded",
        "TimeoutError",
        "SerializerNotInstalled",
        "NotBoundError",
        "InconsistencyError",
        "VersionMismatch",
    },
    "serialization": {
        "registry",
        "register",
        "unregister",
        "dumps",
        "loads",
        "prepare_accept_content",
        "enable_insecure_serializers",
        "disable_insecure_serializers",
    },
    "compression": {"register", "compress", "decompress", "encoders", "get_encoder", "get_decoder"},
    "simple": {"SimpleQueue", "SimpleBuffer"},
    "mixins": {"ConsumerMixin", "ConsumerProducerMixin"},
    "pools": {
        "ConnectionPool",
        "ChannelPool",
        "ProducerPool",
        "connections",
        "producers",
        "reset",
        "get_limit",
        "set_limit",
    },
    "common": {
        "Broadcast",
        "maybe_declare",
        "uuid",
        "itermessages",
        "drain_consumer",
        "eventloop",
        "send_reply",
        "collect_replies",
        "ignore_errors",
        "insured",
    },
}


def test_sync_face_exports_exactly_these_names() -> None:
    assert set(kelp.__all__) == FACE_NAMES
    for name in FACE_NAMES:
        assert getattr(kelp, name) is not None


def test_asyncio_face_exports_the_same_names() -> None:
    assert set(kelp.aio.__all__) == FACE_NAMES


def test_the_two_faces_share_entities_but_not_io_classes() -> None:
    assert kelp.Exchange is kelp.aio.Exchange
    assert kelp.Queue is kelp.aio.Queue
    assert kelp.Connection is not kelp.aio.Connection
    assert kelp.Producer is not kelp.aio.Producer


def test_kombu_module_names_are_importable() -> None:
    for module_name, names in KOMBU_MODULES.items():
        module = importlib.import_module(f"kelp.{module_name}")
        missing = {name for name in names if not hasattr(module, name)}
        assert not missing, f"kelp.{module_name} lacks {sorted(missing)}"


def test_sync_twins_are_generated_from_the_asyncio_source() -> None:
    for module_name in ("connection", "messaging", "message", "simple", "mixins", "pools", "common"):
        module = importlib.import_module(f"kelp.{module_name}")
        assert module.__file__ is not None
        with open(module.__file__, encoding="utf-8") as source:
            first_line = source.readline()
        assert first_line.startswith(f"# Generated from src/kelp/aio/{module_name}.py"), module_name
