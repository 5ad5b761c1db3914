"""bench/scale.py still runs: it builds both sizes and reports every figure (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def test_scale_bench_reports_declare_and_publish_for_both_sizes() -> None:
    spec = importlib.util.spec_from_file_location("kelp_bench_scale", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    report = {
        transport: bench.measure(transport, [3, 40], 5, 20, lambda text: None)
        for transport in ("memory", "sqlite")
    }
    for results in report.values():
        assert [r["queues"] for r in results] == [3, 40]
        for result in results:
            assert set(result["declare"]) == set(result["publish"]) == {"p50_ms", "p99_ms"}
    text = bench.table(report)
    assert "sqlite: 3 vs 40 queues" in text
    assert "publish p99 (ms)" in text
