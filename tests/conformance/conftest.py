"""kelp's own transports under the conformance kit (``kelp.testing``, whose tests ``test_aio.py`` and
``test_sync.py`` bring in here).

Every kit test asks for ``broker_url``: a URL of a fresh, isolated broker on one transport under test. The
transports come from ``KELP_TEST_TRANSPORTS`` (comma-separated; default ``memory``), so the same tests run
on every transport by changing that variable. A transport that needs a server names it in an env var; when
the variable is missing its tests are skipped with the reason, never silently passed.

To plug in a new transport: add a factory to ``URL_FACTORIES`` (tests/transport_urls.py, shared by every
test that runs on several transports) and a line to ``CAPABILITIES`` (plus ``NOT_CLAIMED`` for kit
features it does not do). The tests do not change.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from kelp.testing import Capabilities
from kelp.testing.plugin import Target, use_targets
from transport_urls import URL_FACTORIES, selected

CAPABILITIES: dict[str, Capabilities] = {
    "memory": Capabilities("memory"),
    "sqlite": Capabilities("sqlite"),
    "redis": Capabilities("redis", refusal_raises=False),  # pipelined: the next publish/flush raises
    # amqp: TTL tiers of 1/8 s steps (docs/concepts.md), coarser than the brokers kelp runs itself.
    "amqp": Capabilities("amqp", refusal_raises=False, shared_server=True, delay_slack=1.0, delay_step=0.5),
    "postgres": Capabilities("postgres"),
}


#: What kelp's own transports leave out of the kit's features (see ``kelp.testing.ALL_FEATURES``).
NOT_CLAIMED: dict[str, tuple[str, ...]] = {
    "memory": ("multiprocess", "dead_consumer"),  # one process's memory
    # RabbitMQ refuses or rewrites a malformed x-death itself; it keeps no index of the delayed messages
    # it holds (no cancel, no count), and a message's own TTL would cut short its wait in a TTL tier.
    "amqp": ("x_death_kept_aside", "cancel_delayed", "count_delayed", "delayed_expiration"),
}


def _restart_sqlite() -> None:
    """Restarting the embedded broker is every process closing the file: the survival test has closed
    its connections when it calls this, and reads what survived from a fresh process."""


def _restart_postgres() -> None:
    """A clean restart of the private cluster scripts/postgres.sh started for this run."""
    directory = os.environ.get("KELP_TEST_POSTGRES_DIR")
    if not directory:
        pytest.skip("KELP_TEST_POSTGRES_DIR is not set: the cluster is not this run's to restart")
    script = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
    subprocess.run([str(script), "restart", directory], check=True, stdout=subprocess.DEVNULL, timeout=120)


#: Transports whose restart the kit may run here (the shared RabbitMQ must never be restarted).
RESTARTS: dict[str, Callable[[], None]] = {"sqlite": _restart_sqlite, "postgres": _restart_postgres}


def _target(name: str) -> Target:
    capabilities = CAPABILITIES[name].without(*NOT_CLAIMED.get(name, ()))
    if name in RESTARTS:
        capabilities = dataclasses.replace(capabilities, restart=RESTARTS[name])
    return Target(name, URL_FACTORIES[name], capabilities)


def pytest_configure(config: pytest.Config) -> None:
    use_targets(config, [_target(name) for name in selected()])
