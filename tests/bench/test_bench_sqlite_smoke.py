"""The SQLite benchmark still runs end to end for kelp (2,000 messages, two runs).

Correctness only: every scenario must see every message (the script raises otherwise); no timing is
asserted here. (With very few messages one 2x2 consumer may get none and wait out its 30 s first-message
timeout, hence 2,000.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sqlite.py"

pytestmark = pytest.mark.timeout(240)


def test_sqlite_bench_reports_every_scenario() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--libraries",
            "kelp",
            "--messages",
            "2000",
            "--latency-samples",
            "20",
            "--repeats",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=True,
    ).stdout
    results = json.loads(out)
    kelp = results["kelp"]
    for key in ("publish", "consume", "e2e", "publish_median", "consume_median", "e2e_median"):
        assert kelp[key] > 0
    assert kelp["publish"] >= kelp["publish_median"]  # the best of the runs
    assert 0 < kelp["p50_ms"] <= kelp["p99_ms"]
