"""Delayed delivery's pure rules, shared by the library and the stores: the due time a ``countdown`` or
``eta`` asks for (validated), and the id kelp gives a delayed message that has none, which carries its due
time so that a store can find the message through its due-time index."""

from __future__ import annotations

import datetime
import math
import re
import secrets
import time

from kelp.exceptions import UsageError

__all__ = ["GENERATED_ID_PREFIX", "delayed_message_id", "due_time", "generated_due"]

#: Every id :func:`delayed_message_id` makes starts with this (a store may index user ids apart).
GENERATED_ID_PREFIX = "kd-"
_GENERATED_ID = re.compile(r"kd-([0-9a-f]{1,16})-[0-9a-f]+")


def due_time(countdown: float | None, eta: datetime.datetime | None) -> float | None:
    """The wall-clock due time of a message published with ``countdown`` or ``eta`` (None when neither is
    given or the time is already past: deliver now); UsageError for a bad value."""
    if countdown is None and eta is None:
        return None
    if countdown is not None and eta is not None:
        raise UsageError("give countdown or eta, not both")
    now = time.time()
    if countdown is None:
        if eta is None:
            return None
        if not isinstance(eta, datetime.datetime):
            raise UsageError(f"eta must be a datetime, not {eta!r}")
        if eta.utcoffset() is None:
            raise UsageError(f"eta must be an aware datetime (with a timezone), not the naive {eta!r}")
        due = eta.timestamp()
    else:
        if not isinstance(countdown, int | float) or isinstance(countdown, bool):
            raise UsageError(f"countdown must be a number of seconds, not {countdown!r}")
        if not countdown >= 0 or not math.isfinite(countdown):
            raise UsageError(f"countdown must be >= 0 seconds, not {countdown!r}")
        due = now + countdown
    return due if due > now else None


def delayed_message_id(due: float) -> str:
    """A generated id for a delayed message: ``kd-<due time in ms, hex>-<16 random hex digits>``. It
    carries the due time so that a store can find the message by its due-time index (sqlite://)."""
    return f"kd-{int(due * 1000):x}-{secrets.token_hex(8)}"


def generated_due(message_id: str) -> float | None:
    """The due time a :func:`delayed_message_id` id carries (to the millisecond); None for any other id."""
    generated = _GENERATED_ID.fullmatch(message_id)
    return int(generated[1], 16) / 1000 if generated else None
