"""Fixtures for the amqp:// transport tests on a real RabbitMQ node.

``amqp_url`` is ``KELP_TEST_AMQP_URL`` (``eval "$(scripts/rabbitmq.sh start)"`` sets it); without it every
test here is skipped with that reason. ``names`` gives unique entity names and deletes them afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from kelp_rabbitmq_kit import Proxy, unique

import kelp


@pytest.fixture
def amqp_url() -> str:
    url = os.environ.get("KELP_TEST_AMQP_URL")
    if not url:
        pytest.skip("KELP_TEST_AMQP_URL is not set: start a node with scripts/rabbitmq.sh start")
    return url


@pytest.fixture
def amqp_port(amqp_url: str) -> int:
    return urlsplit(amqp_url).port or 5672


@pytest.fixture
def names(amqp_url: str) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(unique(prefix))
        return made[-1]

    yield make
    if not made:
        return
    try:
        with kelp.Connection(amqp_url, connect_timeout=5) as conn:
            for name in made:
                for entity in (kelp.Queue(name), kelp.Exchange(name)):
                    try:
                        entity(conn.channel()).delete()
                    except Exception:  # cleanup is best effort
                        pass
    except Exception:
        pass


@pytest.fixture
def proxy(amqp_port: int) -> Iterator[Proxy]:
    p = Proxy(amqp_port)
    try:
        yield p
    finally:
        p.close()
