"""The URL of a fresh, isolated broker on each of kelp's transports, for every test that runs on the
transports named by ``KELP_TEST_TRANSPORTS`` (comma-separated; default ``memory``). One table, so a new
transport is added in one place. A transport that needs a server reads its URL from an env var; without it
the test is skipped with the reason, never silently passed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

import pytest


def _hex() -> str:
    return uuid.uuid4().hex[:12]


def _from_env(var: str) -> str:
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"{var} is not set: no server to run this transport's tests against")
    return url


def _with_option(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


def _memory(tmp_path: Path) -> str:
    # A host part names a separate in-process broker: nothing leaks between tests.
    return f"memory://{_hex()}"


def _sqlite(tmp_path: Path) -> str:
    # tmp_path is absolute, so this is sqlite:////abs/path/broker.db.
    return f"sqlite:///{tmp_path}/broker.db"


def _amqp(tmp_path: Path) -> str:
    # One shared broker; tests isolate themselves by giving every exchange and queue a unique name.
    return _from_env("KELP_TEST_AMQP_URL")


def _redis(tmp_path: Path) -> str:
    return _with_option(_from_env("KELP_TEST_REDIS_URL"), f"prefix={_hex()}")


def _postgres(tmp_path: Path) -> str:
    # One shared cluster; each test gets a schema of its own (an isolated broker).
    return _with_option(_from_env("KELP_TEST_POSTGRES_URL"), f"schema=kelp_{_hex()}")


URL_FACTORIES: dict[str, Callable[[Path], str]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "amqp": _amqp,
    "redis": _redis,
    "postgres": _postgres,
}

#: The transports whose broker kelp implements itself (it keeps their counts and delayed messages).
BROKERED = ("memory", "sqlite", "redis", "postgres")


def selected(among: Collection[str] | None = None, fallback: str = "memory") -> list[str]:
    """The transports ``KELP_TEST_TRANSPORTS`` names (those in ``among``, when given), else ``[fallback]``.
    An unknown name is an error of the test run, not a skip."""
    raw = os.environ.get("KELP_TEST_TRANSPORTS", "memory")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in URL_FACTORIES]
    if unknown:
        raise pytest.UsageError(
            f"KELP_TEST_TRANSPORTS names unknown transports {unknown}; known: {sorted(URL_FACTORIES)}"
        )
    chosen = [name for name in names if among is None or name in among]
    return chosen or [fallback]


def url_for(name: str, tmp_path: Path) -> str:
    """A fresh broker's URL on transport ``name`` (skips when its server is not given)."""
    return URL_FACTORIES[name](tmp_path)
