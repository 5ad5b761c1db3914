"""kelp's pytest entry point (``pytest11``): pytest loads this in every run where kelp is installed.

It adds the conformance kit's command-line options (``--kelp-url``...) and nothing else, unless the run is
about the kit: a ``--kelp-url`` (or ``KELP_TESTING_URL``) is given, or the kit's tests are named
(``pytest --pyargs kelp.testing...`` or their directory). Only then does it register the kit's plugin,
``kelp.testing.plugin``, with its fixtures (``broker_url``, ``names``, ``transport``...) and hooks. Any other
test suite sees no fixture and no hook of kelp's.

This module is outside the ``kelp`` package and imports only pytest, so that loading it does not import
kelp: what a conftest sets before importing kelp (``KELP_HOME``, ``KELP_URL``) still counts.

With ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, ``-p kelp.testing.plugin`` loads the kit and its options.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

__all__ = ["add_options"]

KIT_MODULE = "kelp.testing"
PLUGIN = "kelp.testing.plugin"


def add_options(parser: pytest.Parser) -> None:
    """Add the kit's options, once: both this entry point and ``-p kelp.testing.plugin`` call this."""
    group = parser.getgroup("kelp", "kelp conformance kit (kelp.testing)")
    if any("--kelp-url" in option.names() for option in group.options):
        return
    group.addoption(
        "--kelp-url",
        default=os.environ.get("KELP_TESTING_URL"),
        help="URL (template) of the transport under test; {unique} and {tmp} make one broker per test "
        "[env KELP_TESTING_URL]",
    )
    group.addoption(
        "--kelp-exchange-types",
        default=os.environ.get("KELP_TESTING_EXCHANGE_TYPES"),
        help="comma-separated exchange types the transport routes through (default: all, "
        "kelp.testing.EXCHANGE_TYPES) [env KELP_TESTING_EXCHANGE_TYPES]",
    )
    group.addoption(
        "--kelp-without",
        default=os.environ.get("KELP_TESTING_WITHOUT", ""),
        help="comma-separated features the transport does not claim, from kelp.testing.ALL_FEATURES "
        "[env KELP_TESTING_WITHOUT]",
    )
    group.addoption(
        "--kelp-pipelined-refusals",
        action="store_true",
        default=os.environ.get("KELP_TESTING_PIPELINED_REFUSALS", "") not in ("", "0"),
        help="a publish refused by a full queue raises from a later publish or flush, not from itself "
        "[env KELP_TESTING_PIPELINED_REFUSALS=1]",
    )
    group.addoption(
        "--kelp-restart-command",
        default=os.environ.get("KELP_TESTING_RESTART_COMMAND"),
        help="shell command that restarts the broker; enables the survival tests "
        "[env KELP_TESTING_RESTART_COMMAND]",
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("kelp_url", None) or _names_the_kit(config):
        # Registered under its module name, as -p and pytest_plugins do: never twice.
        config.pluginmanager.import_plugin(PLUGIN)


def _names_the_kit(config: pytest.Config) -> bool:
    """Whether the command line names the kit's tests: ``--pyargs kelp.testing[.x]`` or a path inside it."""
    arguments = [str(argument).split("::", 1)[0] for argument in config.args]
    if config.getoption("pyargs", False) and any(
        argument == KIT_MODULE or argument.startswith(KIT_MODULE + ".") for argument in arguments
    ):
        return True
    kit = _kit_directory()
    if kit is None:
        return False
    root = config.invocation_params.dir
    return any((root / argument).resolve().is_relative_to(kit) for argument in arguments)


def _kit_directory() -> Path | None:
    # find_spec of a top-level name imports nothing.
    spec = importlib.util.find_spec("kelp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return (Path(next(iter(spec.submodule_search_locations))) / "testing").resolve()
