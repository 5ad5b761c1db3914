"""kelp's own transports under the conformance kit (``kelp.testing``, whose tests ``test_aio.py`` and
``test_sync.py`` bring in here).

Every kit test asks for ``broker_url``: a URL of a fresh, isolated broker on one transport under test. The
transports come from ``KELP_TEST_TRANSPORTS`` (comma-separated; default ``memory``), so the same tests run
on every transport by changing that variable. A transport that needs a server names it in an env var; when
the variable is missing its tests are skipped with the reason, never silently passed.

To plug in a new transport: add a factory to ``URL_FACTORIES`` and a line to ``CAPABILITIES`` (plus
``NOT_CLAIMED`` for kit features it does not do). The tests do not change.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from kelp.testing import Capabilities
from kelp.testing.plugin import Target, use_targets


def _hex() -> str:
    return uuid.uuid4().hex[:12]


def _memory(tmp_path: Path) -> str:
    # A host part names a separate in-process broker: nothing leaks between tests.
    return f"memory://{_hex()}"


def _sqlite(tmp_path: Path) -> str:
    # tmp_path is absolute, so this is sqlite:////abs/path/broker.db.
    return f"sqlite:///{tmp_path}/broker.db"


def _from_env(var: str) -> str:
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"{var} is not set: no server to run this transport's conformance tests against")
    return url


def _amqp(tmp_path: Path) -> str:
    # One shared broker; tests isolate themselves by giving every exchange and queue a unique name.
    return _from_env("KELP_TEST_AMQP_URL")


def _redis(tmp_path: Path) -> str:
    url = _from_env("KELP_TEST_REDIS_URL")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}prefix={_hex()}"


def _postgres(tmp_path: Path) -> str:
    # One shared cluster; each test gets a schema of its own (an isolated broker).
    url = _from_env("KELP_TEST_POSTGRES_URL")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}schema=kelp_{_hex()}"


URL_FACTORIES: dict[str, Callable[[Path], str]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "amqp": _amqp,
    "redis": _redis,
    "postgres": _postgres,
}


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


def _transports() -> list[str]:
    raw = os.environ.get("KELP_TEST_TRANSPORTS", "memory")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _unknown(name: str) -> Callable[[Path], str]:
    def fail(tmp_path: Path) -> str:
        pytest.fail(f"KELP_TEST_TRANSPORTS names unknown transport {name!r}; known: {sorted(URL_FACTORIES)}")

    return fail


def _target(name: str) -> Target:
    if name not in URL_FACTORIES:
        return Target(name, _unknown(name), Capabilities(name))
    capabilities = CAPABILITIES[name].without(*NOT_CLAIMED.get(name, ()))
    if name in RESTARTS:
        capabilities = dataclasses.replace(capabilities, restart=RESTARTS[name])
    return Target(name, URL_FACTORIES[name], capabilities)


def pytest_configure(config: pytest.Config) -> None:
    use_targets(config, [_target(name) for name in _transports()])
