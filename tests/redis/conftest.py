"""Fixtures for the redis:// transport tests.

``redis_base``: the shared server from ``KELP_TEST_REDIS_URL``, or else one private server for the session
(when ``redis-server`` is installed); the tests skip with the reason when there is neither.
``redis_url``: a URL on it with a fresh ``prefix`` (an isolated broker) and a short ``liveness``.
``private_redis``: a server of the test's own, in its tmp_path, that the test may kill and restart.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kelp_redis_kit import LIVENESS, RedisServer, have_redis_server, with_options


@pytest.fixture(scope="session")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("KELP_TEST_REDIS_URL")
    if url:
        yield url
        return
    if not have_redis_server():
        pytest.skip("KELP_TEST_REDIS_URL is not set and redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis-session")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_base: str) -> str:
    return with_options(redis_base, prefix=uuid.uuid4().hex[:12], liveness=LIVENESS)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not have_redis_server():
        pytest.skip("redis-server is not installed: this test needs a server of its own to restart")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
