"""Fixtures shared by both faces of the conformance suite (``aio/`` is the source, ``sync/`` is generated).

Every test asks for ``broker_url``: a URL of a fresh, isolated broker on one transport under test. The
transports come from ``KELP_TEST_TRANSPORTS`` (comma-separated; default ``memory``), so the same tests run
on every transport by changing that variable. A transport that needs a server names it in an env var; when
the variable is missing its tests are skipped with the reason, never silently passed.

To plug in a new transport: add a factory to ``URL_FACTORIES`` (and a line to ``CAPABILITIES`` if it is a
native broker rather than one kelp brokers itself). The tests do not change.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


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


@dataclass(frozen=True)
class Capabilities:
    """What a test may assert beyond the shared semantics.

    ``refusal_raises``: a publish that a queue refuses (``x-overflow: reject-publish``) raises
    ``MessageNacked`` from ``publish``. True for the transports kelp brokers itself, where routing happens
    inside ``publish``; a native broker reports it through publisher confirms, which are pipelined: the
    refusal comes from a later publish or, at the latest, ``flush``.

    ``shared_server``: every test talks to one long-lived broker, so the entities a test named through
    ``names`` are deleted (best effort) when it ends.
    """

    name: str
    refusal_raises: bool = True
    shared_server: bool = False


CAPABILITIES: dict[str, Capabilities] = {
    "memory": Capabilities("memory"),
    "sqlite": Capabilities("sqlite"),
    "redis": Capabilities("redis", refusal_raises=False),  # pipelined: the next publish/flush raises
    "amqp": Capabilities("amqp", refusal_raises=False, shared_server=True),
    "postgres": Capabilities("postgres"),
}


def _transports() -> list[str]:
    raw = os.environ.get("KELP_TEST_TRANSPORTS", "memory")
    return [name.strip() for name in raw.split(",") if name.strip()]


@pytest.fixture(params=_transports())
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in URL_FACTORIES:
        pytest.fail(f"KELP_TEST_TRANSPORTS names unknown transport {name!r}; known: {sorted(URL_FACTORIES)}")
    return name


@pytest.fixture
def broker_url(transport: str, tmp_path: Path) -> str:
    """The URL of a fresh broker, isolated from every other test's."""
    return URL_FACTORIES[transport](tmp_path)


@pytest.fixture
def capabilities(transport: str) -> Capabilities:
    return CAPABILITIES[transport]


@pytest.fixture
def names(request: pytest.FixtureRequest, transport: str) -> Iterator[Callable[[str], str]]:
    """``names("q") -> "q-<hex>"``: entity names unique across tests sharing one broker."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{_hex()}"
        made.append(name)
        return name

    yield make
    if made and CAPABILITIES[transport].shared_server:
        _delete_entities(request.getfixturevalue("broker_url"), made)


def _delete_entities(url: str, entity_names: list[str]) -> None:
    """Best-effort cleanup on a shared broker: each name may be a queue, an exchange, both or neither."""
    import kelp

    try:
        with kelp.Connection(url) as conn:
            for name in entity_names:
                for entity in (kelp.Queue(name), kelp.Exchange(name)):
                    try:
                        entity(conn.channel()).delete()
                    except Exception:  # cleanup must never fail a test
                        pass
    except Exception:
        pass
