"""bench/delayed.py still runs: every delayed message arrives, none early (the bench itself fails
otherwise), on memory:// with a few hundred messages; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "delayed.py"


def test_lateness_run_delivers_every_message() -> None:
    args = ["--transports", "memory", "--messages", "300", "--spread", "0.5", "--lead", "0.3", "--json"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["memory"]
    assert result["count"] == 300
    assert result["p50_ms"] >= 0


def test_backlog_run_counts_the_held_messages() -> None:
    args = ["--transports", "memory", "--pending", "2000", "--json"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["memory"]
    assert result["delayed_counted"] == 2000
    assert result["on_time_with_backlog"]["count"] == 1000
