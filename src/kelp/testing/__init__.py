"""kelp.testing: the conformance kit. One set of behaviour tests that any transport — kelp's own or one
written elsewhere — runs to show that it behaves like RabbitMQ under kelp's API, on both faces (``kelp``
and ``kelp.aio``): routing through every exchange type, acks and redelivery, prefetch, TTL, queue expiry,
length limits, priorities, dead-lettering, mandatory returns, declarations and their errors, SimpleQueue,
request/reply, serialization, per-queue FIFO, dead consumers and broker restarts.

Two ways to run it (pytest is needed; ``pip install kelp[testing]``)::

    pytest --pyargs kelp.testing --kelp-url 'memory://{unique}'

    from kelp.testing import Capabilities, check_transport
    check_transport("sqlite:///{tmp}/broker.db")           # raises TransportCheckFailed on failures

A transport that does not do something (an exchange type, TTL, several processes...) says so in its
:class:`Capabilities`; the tests that need it are skipped with that reason, never passed.
"""

from kelp.testing._capabilities import ALL_FEATURES, EXCHANGE_TYPES, Capabilities
from kelp.testing._check import CheckResult, TransportCheckFailed, check_transport
from kelp.testing._collect import add_kit_tests

__all__ = [
    "ALL_FEATURES",
    "EXCHANGE_TYPES",
    "Capabilities",
    "CheckResult",
    "TransportCheckFailed",
    "add_kit_tests",
    "check_transport",
]
