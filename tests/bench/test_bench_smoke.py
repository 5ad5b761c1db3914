"""The memory-transport benchmark still runs: every scenario delivers and acks every message.

Correctness only, with a few hundred messages; no timing is asserted (timings belong to ``bench/``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "memory.py"
MESSAGES = 200


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kelp_bench_memory", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

try:
    import kombu  # noqa: F401  (only to know whether the Kombu scenario can run)
except ImportError:
    HAVE_KOMBU = False
else:
    HAVE_KOMBU = True


def test_body_is_about_256_json_bytes() -> None:
    assert len(json.dumps(bench.make_body())) == bench.BODY_SIZE


@pytest.mark.parametrize("run", [bench.run_kelp, bench.run_kelp_aio], ids=["kelp", "kelp.aio"])
def test_kelp_scenarios_receive_and_ack_everything(run) -> None:
    result = run(MESSAGES)
    result.check()
    assert (result.received, result.acked, result.left_in_queue) == (MESSAGES, MESSAGES, 0)


@pytest.mark.skipif(not HAVE_KOMBU, reason="kombu is not installed")
def test_kombu_scenario_receives_and_acks_everything() -> None:
    result = bench.run_kombu(MESSAGES)
    result.check()
    assert (result.received, result.acked, result.left_in_queue) == (MESSAGES, MESSAGES, 0)


def test_check_refuses_lost_messages() -> None:
    result = bench.RunResult(
        library="kelp",
        messages=MESSAGES,
        publish_seconds=1.0,
        publish_cpu_seconds=1.0,
        consume_seconds=1.0,
        consume_cpu_seconds=1.0,
        received=MESSAGES - 1,
        acked=MESSAGES - 1,
        left_in_queue=0,
    )
    with pytest.raises(RuntimeError, match="received 199"):
        result.check()


def test_command_line_runs_in_subprocesses_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    libraries = "kelp,kelp.aio,kombu" if HAVE_KOMBU else "kelp,kelp.aio"
    assert (
        bench.main(["--messages", str(MESSAGES), "--repeats", "1", "--libraries", libraries, "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["messages"] == MESSAGES
    assert set(report["results"]) == set(libraries.split(","))
    for row in report["results"].values():
        (run,) = row["runs"]
        assert (run["received"], run["acked"], run["left_in_queue"]) == (MESSAGES, MESSAGES, 0)
        assert row["peak_rss_kb"] > 0
        assert row["tracemalloc_peak_bytes"] > 0
    if "kombu" in report["results"]:
        assert set(report["ratios"]) == {"kelp/kombu", "kelp.aio/kombu"}
    assert "publish" in bench.format_report(report)
