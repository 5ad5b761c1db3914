"""What the brokers kelp implements do with a stored message they cannot read.

kelp writes every message it stores itself, but the store is a file, a Redis prefix or a PostgreSQL
schema anyone can write to: a row inserted with raw SQL, an entry added with a raw XADD, text that is not
UTF-8, properties that are not JSON. Such a message is *malformed*. It is never handed to a consumer and
never stops the queue, the batch it was claimed with, or the broker: it leaves its queue, and

* with a dead-letter exchange on the queue, is dead-lettered (reason ``rejected``, the usual ``x-death``)
  with its body as stored, no properties, and the header :data:`MALFORMED_HEADER` (``x-kelp-malformed``):
  a table with ``problem`` (what was wrong) and the stored fields kelp could not read, as text;
* without one, is dropped with an ERROR log line naming the store, the queue and the message id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MALFORMED_HEADER",
    "Malformed",
    "as_text",
    "check_properties",
    "malformed_tables",
    "report_dropped",
]

logger = logging.getLogger("kelp.broker")

#: The header that marks a dead-lettered copy of a malformed message (see the module docstring).
MALFORMED_HEADER = "x-kelp-malformed"
# Stored text kept on the copy is cut to this many characters.
_KEEP = 1024


class Malformed(ValueError):
    """A stored message kelp cannot read; the message says what is wrong."""


#: The properties a consumer's message reads as text (to pick the deserializer): any other type is malformed.
_TEXT_PROPERTIES = ("content_type", "content_encoding")


def check_properties(properties: Mapping[str, Any]) -> None:
    """Raise Malformed for a stored properties table a consumer cannot read (a text property that is
    not text: AMQP carries them as short strings, and kelp's producer stores them so)."""
    for key in _TEXT_PROPERTIES:
        value = properties.get(key)
        if value is not None and type(value) is not str:
            raise Malformed(f"stored property {key} is a {type(value).__name__}, not text")


def as_text(value: Any) -> str:
    """A stored field as text for the record: undecodable bytes replaced, long values cut."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    else:
        text = repr(value)
    return text if len(text) <= _KEEP else text[:_KEEP] + "..."


def malformed_tables(problem: str, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(properties, headers)`` to dead-letter a malformed message with: ``raw`` names the stored fields
    that could not be read."""
    record: dict[str, Any] = {"problem": problem}
    for key, value in raw.items():
        record[key] = as_text(value)
    return {}, {MALFORMED_HEADER: record}


def report_dropped(
    store: str, queue: str, message_id: Any, problem: str, why: str = "the queue has no dead-letter exchange"
) -> None:
    """Log (ERROR) a malformed message dropped rather than dead-lettered, and ``why``."""
    logger.error(
        "kelp: dropped malformed message %s of queue %r in %s (%s): %s",
        as_text(message_id),
        queue,
        store,
        why,
        problem,
    )
