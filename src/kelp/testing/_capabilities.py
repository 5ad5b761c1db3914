"""What a transport under test claims to do, so that the kit skips (with the reason) only what it does not.

Kept free of pytest so that ``kelp.testing.Capabilities`` can be built anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kelp.exceptions import UsageError

__all__ = ["ALL_FEATURES", "EXCHANGE_TYPES", "Capabilities"]

#: The exchange types of the AMQP model; a test routing through one is skipped where it is not claimed.
EXCHANGE_TYPES: frozenset[str] = frozenset({"direct", "fanout", "topic", "headers"})

#: Behaviours beyond plain routing, acks and redelivery that a test may need. Every transport kelp
#: ships claims them all (``x_death_kept_aside`` excepted on RabbitMQ), and so does a ``Capabilities()``
#: made with no arguments: a transport leaves out what it does not do, and those tests are skipped.
ALL_FEATURES: frozenset[str] = frozenset(
    {
        # exchange-to-exchange bindings (exchange_bind / Exchange.bind_to)
        "exchange_bindings",
        # per-queue and per-message TTL (x-message-ttl, expiration)
        "ttl",
        # queues that delete themselves when unused (x-expires)
        "queue_expiry",
        # x-max-length / x-max-length-bytes, drop-head and reject-publish
        "max_length",
        # x-max-priority queues
        "priority",
        # x-dead-letter-exchange / -routing-key and x-death headers
        "dead_letter",
        # mandatory publishes returned when unroutable
        "mandatory",
        # a malformed x-death header of a dead-lettered message is kept aside, not refused
        "x_death_kept_aside",
        # several processes share one broker (a file or a server, not one process's memory)
        "multiprocess",
        # a consumer process killed with SIGKILL releases its unacked messages for redelivery
        "dead_consumer",
        # publish(countdown=/eta=): the broker holds the message until its due time
        "delayed",
        # Producer.cancel_delayed withdraws a held message
        "cancel_delayed",
        # queue_stats rows count held messages (QueueStats.delayed)
        "count_delayed",
        # a delayed message may carry its own expiration (counted from its due time)
        "delayed_expiration",
    }
)


@dataclass(frozen=True)
class Capabilities:
    """What the transport under test claims.

    ``name``: a label for reports. ``exchange_types`` and ``features`` (names from :data:`ALL_FEATURES`):
    what it does; a test that needs something not listed is skipped, saying what was missing.
    ``refusal_raises``: a publish a queue refuses (``x-overflow: reject-publish``) raises
    ``MessageNacked`` from ``publish`` itself (true where the transport routes inside publish); false
    where refusals come back through pipelined confirms, from a later publish or ``flush`` at the latest.
    ``shared_server``: every test talks to one long-lived broker, so the entities a test named are
    deleted (best effort) when it ends. ``restart``: a callable that restarts the broker (every
    connection is closed when it is called); the survival tests run only when it is given.
    ``dead_consumer_within``: seconds within which the unacked messages of a killed consumer process must
    be delivered again. ``delay_slack``: how late (seconds) a delayed message may become ready under test
    load; ``delay_step``: the smallest gap between due times whose order the transport keeps.
    """

    name: str = "transport"
    refusal_raises: bool = True
    shared_server: bool = False
    exchange_types: frozenset[str] = EXCHANGE_TYPES
    features: frozenset[str] = ALL_FEATURES
    restart: Callable[[], object] | None = field(default=None, compare=False)
    dead_consumer_within: float = 10.0
    delay_slack: float = 0.5
    delay_step: float = 0.3

    def __post_init__(self) -> None:
        unknown_types = set(self.exchange_types) - EXCHANGE_TYPES
        if unknown_types:
            raise UsageError(
                f"unknown exchange types {sorted(unknown_types)}; known: {sorted(EXCHANGE_TYPES)}"
            )
        unknown = set(self.features) - ALL_FEATURES
        if unknown:
            raise UsageError(f"unknown features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}")
        object.__setattr__(self, "exchange_types", frozenset(self.exchange_types))
        object.__setattr__(self, "features", frozenset(self.features))

    def without(self, *names: str) -> Capabilities:
        """A copy that does not claim ``names`` (features or exchange types)."""
        self._check_names(names)
        return dataclasses.replace(
            self, exchange_types=self.exchange_types - set(names), features=self.features - set(names)
        )

    def supports(self, need: str) -> bool:
        """Whether ``need`` (a feature, an exchange type, or ``"restart"``) is claimed."""
        self._check_names((need,))
        if need == "restart":
            return self.restart is not None
        return need in self.exchange_types or need in self.features

    @staticmethod
    def _check_names(names: Iterable[str]) -> None:
        known = ALL_FEATURES | EXCHANGE_TYPES | {"restart"}
        unknown = sorted(set(names) - known)
        if unknown:
            raise UsageError(f"unknown capabilities {unknown}; known: {sorted(known)}")
