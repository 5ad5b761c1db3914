"""Every test gets its own in-process broker: ``memory://<hex>`` names a broker no other test touches."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex[:12]}"


@pytest.fixture
def name() -> str:
    """A queue/exchange name unique to the test."""
    return f"q-{uuid.uuid4().hex[:8]}"
