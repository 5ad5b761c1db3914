"""The PostgreSQL benchmark still runs end to end (kelp, Kombu, the floor; few messages, a 2 s open
transaction). Correctness only: every scenario must see every message (a child fails otherwise); no timing
is asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "postgres.py"

pytestmark = pytest.mark.timeout(240)


def test_postgres_bench_reports_every_scenario() -> None:
    url = os.environ.get("KELP_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("KELP_TEST_POSTGRES_URL is not set (scripts/postgres.sh start)")
    args = ["--url", url, "--messages", "1000", "--kombu-messages", "50", "--latency-messages", "20"]
    out = subprocess.run(
        [sys.executable, str(BENCH), *args, "--long-tx", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=220,
        check=True,
    ).stdout
    results = json.loads(out)
    for key in (
        "kelp_publish",
        "kelp_consume",
        "kombu_publish",
        "kombu_consume",
        "floor_publish",
        "kelp_2x2",
    ):
        assert results[key] > 0
    assert 0 < results["kelp_p50_ms"] <= results["kelp_p99_ms"]
    assert results["long_tx_total"] > 0
