"""Fixtures for the postgresql:// transport tests: ``pg_url``, a URL of a fresh broker (its own schema) on
the cluster named by ``KELP_TEST_POSTGRES_URL`` (``scripts/postgres.sh start``); skipped without one."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture
def pg_base() -> str:
    url = os.environ.get("KELP_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("KELP_TEST_POSTGRES_URL is not set (scripts/postgres.sh start)")
    return url


@pytest.fixture
def pg_url(pg_base: str) -> str:
    return f"{pg_base}?schema=kelp_t{uuid.uuid4().hex[:12]}"
