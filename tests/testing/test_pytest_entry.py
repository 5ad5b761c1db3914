"""kelp's pytest entry point: ``pytest --pyargs kelp.testing`` needs no ``-p``, and every other test suite
on a machine where kelp is installed sees no fixture of the kit and does not import kelp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kelp.testing

KIT_ARGS = ["--pyargs", "kelp.testing.sync", "-k", "routing_fanout", "--kelp-url", "memory://{unique}"]

UNRELATED_TESTS = """
import sys


def test_takes_names(names):
    pass


def test_takes_transport(transport):
    pass


def test_kelp_is_not_imported():
    assert "kelp" not in sys.modules
"""


def run_pytest(
    directory: Path, *args: str, autoload: bool = True, **environ: str
) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh process, in ``directory``, with no KELP_TESTING_* or PYTEST_* but ``environ``."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("KELP_TESTING_", "PYTEST_"))
    }
    env.update(environ)
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_the_kit_runs_by_name_alone(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, *KIT_ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def test_another_suite_sees_no_fixture_of_the_kit_and_no_kelp(tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(UNRELATED_TESTS)
    done = run_pytest(tmp_path, "-rA")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "fixture 'names' not found" in output
    assert "fixture 'transport' not found" in output
    assert "kelp" not in output.replace("test_kelp_is_not_imported", "")
    assert "1 passed, 2 errors" in done.stdout


def test_the_plugin_named_with_p_still_loads_once(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "-p", "kelp.testing.plugin", *KIT_ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def test_with_autoload_off_p_brings_the_options(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, "-p", "kelp.testing.plugin", *KIT_ARGS, autoload=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
    without_p = run_pytest(tmp_path, *KIT_ARGS, autoload=False)
    assert without_p.returncode == 4  # pytest's usage error: nothing added --kelp-url
    assert "--kelp-url" in without_p.stderr


def test_a_kelp_url_in_the_environment_brings_the_kit(tmp_path: Path) -> None:
    (tmp_path / "test_uses_the_kit.py").write_text(
        "def test_url(broker_url, transport):\n    assert broker_url.startswith('memory://')\n"
        "    assert transport == 'memory'\n"
    )
    done = run_pytest(tmp_path, KELP_TESTING_URL="memory://{unique}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_the_kit_named_without_a_url_asks_for_one(tmp_path: Path) -> None:
    kit = Path(kelp.testing.__file__).parent
    for named in (["--pyargs", "kelp.testing.sync"], [str(kit / "sync")]):
        done = run_pytest(tmp_path, *named, "-k", "routing_fanout")
        assert done.returncode != 0
        assert "kelp.testing has no transport to test: give --kelp-url" in done.stdout, done.stdout
