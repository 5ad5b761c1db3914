"""The differential harness: each scenario runs under real Kombu against RabbitMQ (the reference) and under
kelp on every transport named by KELP_TEST_TRANSPORTS; the observable results must be equal.

Needs KELP_TEST_AMQP_URL (the reference runs there); without it every test here is skipped with the
reason. Differences kelp keeps on purpose are not asserted here: docs/migrating-from-kombu.md lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from transport_urls import selected, url_for

# `same()` asserts in the helpers modules: rewrite them so that a failure shows the differing data.
pytest.register_assert_rewrite(f"{__package__}.aio.helpers", f"{__package__}.sync.helpers")

AMQP_URL = os.environ.get("KELP_TEST_AMQP_URL")


@pytest.fixture
def reference_url() -> str:
    """Kombu's URL of the RabbitMQ the reference runs on (``pyamqp://``)."""
    if not AMQP_URL:
        pytest.skip("KELP_TEST_AMQP_URL is not set: no RabbitMQ to run the Kombu reference against")
    return "py" + AMQP_URL if AMQP_URL.startswith("amqp://") else AMQP_URL


@pytest.fixture(params=selected())
def subject_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """kelp's URL of a fresh broker on one transport under test."""
    return url_for(request.param, tmp_path)
