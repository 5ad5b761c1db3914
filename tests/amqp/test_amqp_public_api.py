from __future__ import annotations

import ast
import pathlib

import kelp.amqp

EXPECTED = {
    "BasicProperties",
    "CancelOk",
    "ChannelClosed",
    "ChannelFlow",
    "ChannelOpened",
    "ChannelState",
    "ConfirmSelectOk",
    "Confirmed",
    "Connection",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionState",
    "ConnectionUnblocked",
    "ConsumeOk",
    "ConsumerCancelled",
    "DEFAULT_MAX_BODY_SIZE",
    "Deliver",
    "Event",
    "ExchangeBindOk",
    "ExchangeDeclareOk",
    "ExchangeDeleteOk",
    "ExchangeUnbindOk",
    "FRAME_MIN_SIZE",
    "FieldTable",
    "FieldValue",
    "FlowOk",
    "GetEmpty",
    "GetOk",
    "Heartbeat",
    "LocalProtocolError",
    "PROTOCOL_HEADER",
    "Outbox",
    "ProtocolError",
    "QosOk",
    "QueueBindOk",
    "QueueDeclareOk",
    "QueueDeleteOk",
    "QueuePurgeOk",
    "QueueUnbindOk",
    "RecoverOk",
    "RemoteProtocolError",
    "ReplyCode",
    "Return",
    "TxCommitOk",
    "TxRollbackOk",
    "TxSelectOk",
    "Waiter",
    "reply_code_name",
}


def test_exported_names_are_pinned() -> None:
    assert set(kelp.amqp.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(kelp.amqp, name)


def test_events_are_frozen() -> None:
    for name in kelp.amqp.__all__:
        obj = getattr(kelp.amqp, name)
        if isinstance(obj, type) and issubclass(obj, kelp.amqp.Event) and obj is not kelp.amqp.Event:
            params = obj.__dataclass_params__  # type: ignore[attr-defined]
            assert params.frozen, name


def test_package_stands_alone_and_does_no_io() -> None:
    """The protocol core imports only the standard library's pure modules and nothing else from kelp."""
    package = pathlib.Path(kelp.amqp.__file__).parent
    allowed = {
        "__future__",
        "collections",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "struct",
        "sys",
        "typing",
    }
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must stay inside kelp.amqp
                    assert node.level == 1, path
                    continue
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in allowed, f"{path.name} imports {module}"
