"""Fixtures of the cross-process tests: ``url`` - a fresh broker on each transport named by
``KELP_TEST_TRANSPORTS`` among sqlite, redis, amqp and postgres (these override the memory-only ones of
tests/library); ``names`` - names unique to the test, deleted afterwards (RabbitMQ is shared);
``held`` - start process B and keep it until the test ends (killed if still running)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kelp
from kelp.exceptions import KelpError
from transport_urls import selected, url_for

from .kit import Held


@pytest.fixture(params=selected(("sqlite", "redis", "amqp", "postgres"), fallback="sqlite"))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, tmp_path)


@pytest.fixture
def names(url: str) -> Iterator[Callable[[str], str]]:
    """``names("q")``: a name unique to the test (RabbitMQ is shared); each is deleted afterwards, as a
    queue and as an exchange, so nothing is left on the shared broker."""
    unique = uuid.uuid4().hex[:8]
    made: list[str] = []

    def name(kind: str) -> str:
        made.append(f"xp-{kind}-{unique}")
        return made[-1]

    yield name
    with kelp.Connection(url) as conn:
        for made_name in made:
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    getattr(conn.channel(), delete)(made_name)
                except KelpError:
                    pass


@pytest.fixture
def held() -> Iterator[Callable[..., Held]]:
    started: list[Held] = []

    def start(url: str, *ops: list[Any]) -> Held:
        started.append(Held(url, *ops))
        return started[-1]

    yield start
    for process in started:
        process.close()
