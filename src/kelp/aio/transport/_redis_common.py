"""What the parts of the redis:// transport share: their limits and the mapping of the broker script's
refusals to kelp's exceptions. (Consumers, delivery tags and unacked deliveries are kept by the broker
core's :class:`~kelp._broker.core.channel.ChannelState`, as for the other brokers kelp runs itself.)"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from redis.exceptions import RedisError, ResponseError

from kelp._options import integer_option
from kelp.exceptions import (
    AccessRefused,
    NotFound,
    OperationalError,
    PreconditionFailed,
    ResourceLocked,
)
from kelp.routing import InvalidXMatch

#: The longest single blocking wait in drain: local events (a new consumer, a freed window) are noticed
#: within this time even while a wait is in progress.
WAIT_CAP = 0.5
#: How late Redis may end a blocking command's timeout: it checks them at its server tick (hz 10).
SERVER_TICK = 0.1
#: Acks buffered before they are sent without waiting for the connection's next operation.
ACK_BATCH = 512
#: Envelopes per script call in a published batch (all calls of a batch share one round trip).
PUBLISH_CHUNK = 500
#: The script arguments of one published envelope (see lua_ops: publish).
PUBLISH_ARGS = 11
#: Transient publishes buffered before the publisher writes them itself.
PUBLISH_BATCH = 256
#: Seconds a transient publish waits in the buffer at most when the publisher pauses.
LINGER = 0.001
#: Default bounds of the outbox (publishes written, reply not read yet): ``max_unconfirmed`` envelopes,
#: ``max_unconfirmed_bytes`` of bodies. A publish that would overflow it reads replies first.
MAX_UNCONFIRMED = 10_000
MAX_UNCONFIRMED_BYTES = 32 * 1024 * 1024
#: Seconds between two heartbeats; each also checks that the other connections' clients are still
#: connected to Redis, so a killed process's messages come back within about this time.
CLIENT_CHECK = 0.5
_TRUE = frozenset({"1", "true", "yes", "on"})

_PREFIX = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_KELP_ERROR = re.compile(r"KELP:([A-Z_]+):(.*)", re.DOTALL)


class _Lost(OperationalError):
    """The broker released this connection (it missed its heartbeats for longer than liveness)."""


_ERRORS: dict[str, type[Exception]] = {
    "LOST": _Lost,
    "NOT_FOUND": NotFound,
    "PRECONDITION": PreconditionFailed,
    "LOCKED": ResourceLocked,
    "ACCESS": AccessRefused,
    "VALUE": ValueError,
    "XMATCH": InvalidXMatch,
}


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """Turn redis-py's exceptions into kelp's: broker refusals into channel errors, the rest operational."""
    try:
        yield
    except ResponseError as exc:
        match = _KELP_ERROR.search(str(exc))
        if match is None:
            raise OperationalError(f"redis: {exc}") from exc
        raise _ERRORS[match.group(1)](match.group(2)) from None
    except RedisError as exc:
        raise OperationalError(f"redis: {exc}") from exc


def _positive(query: Mapping[str, Any], options: Mapping[str, Any], name: str, default: int) -> int:
    return integer_option("redis", name, query.get(name, options.get(name, default)), 1, 2**62)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
