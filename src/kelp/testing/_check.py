"""``check_transport``: run the conformance kit against one transport from Python and get a verdict."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kelp.exceptions import KelpError, UsageError
from kelp.testing._capabilities import Capabilities

if TYPE_CHECKING:
    import pytest

__all__ = ["CheckResult", "TransportCheckFailed", "check_transport"]

KIT_DIR = Path(__file__).resolve().parent


@dataclass
class CheckResult:
    """What a run of the kit found: node ids of the tests that passed, failed (with pytest's report) and
    were skipped (with the reason), and pytest's exit code."""

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        """Whether every test that ran passed (and at least one ran)."""
        return not self.failed and bool(self.passed) and self.exit_code in (0, 5)

    def summary(self) -> str:
        lines = [f"{len(self.passed)} passed, {len(self.failed)} failed, {len(self.skipped)} skipped"]
        lines.extend(f"FAILED {node}" for node in self.failed)
        return "\n".join(lines)


class TransportCheckFailed(KelpError):
    """The transport under test failed tests of the conformance kit; ``result`` says which and why."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(f"the transport failed the kelp conformance kit: {result.summary()}")
        self.result = result


class _Recorder:
    """A pytest plugin object: sets the target and records each test's outcome."""

    def __init__(self, target: object, result: CheckResult) -> None:
        self.target = target
        self.result = result

    def pytest_configure(self, config: pytest.Config) -> None:
        from kelp.testing.plugin import Target, use_targets

        assert isinstance(self.target, Target)
        use_targets(config, [self.target])

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.result.failed[report.nodeid] = report.longreprtext
        elif report.skipped:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.result.skipped[report.nodeid] = reason.removeprefix("Skipped: ")
        elif report.when == "call":
            self.result.passed.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.result.failed[report.nodeid or "collection"] = report.longreprtext


def check_transport(
    url_factory: str | Callable[[Path], str],
    capabilities: Capabilities | None = None,
    *,
    faces: Sequence[str] = ("aio", "sync"),
    select: str | None = None,
    pytest_args: Sequence[str] = (),
    raise_on_failure: bool = True,
) -> CheckResult:
    """Run the conformance kit against one transport, in this process, and return what it found.

    ``url_factory`` is a URL template (``{unique}`` becomes a fresh hex string per test, ``{tmp}`` a fresh
    temporary directory; a URL with neither is one shared server) or a callable ``(tmp_dir) -> url``
    returning the URL of a broker no other test sees. ``capabilities`` says what the transport claims
    (default: everything; the tests needing anything it does not claim are skipped). ``faces`` picks the
    API faces (``"aio"``, ``"sync"``), ``select`` is a pytest ``-k`` expression, ``pytest_args`` go to pytest
    as they are (``["-x"]``, ``["-W", "error"]``...). Blocks until every test ran.

    Raises :class:`TransportCheckFailed` (carrying the :class:`CheckResult`) when a test failed or none
    ran, unless ``raise_on_failure`` is false. Needs pytest (``pip install kelp[testing]``).
    """
    try:
        import pytest
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError("check_transport needs pytest: pip install 'kelp[testing]'") from exc
    from kelp.testing._collect import FACES
    from kelp.testing.plugin import Target
    from kelp.testing.plugin import url_factory as template_factory

    unknown = [face for face in faces if face not in FACES]
    if unknown or not faces:
        raise UsageError(f"faces must be chosen from {FACES}, not {list(faces)!r}")
    factory = template_factory(url_factory) if isinstance(url_factory, str) else url_factory
    if capabilities is None:
        shared = isinstance(url_factory, str) and "{unique}" not in url_factory and "{tmp}" not in url_factory
        capabilities = Capabilities(shared_server=shared)
    result = CheckResult()
    target = Target(capabilities.name, factory, capabilities)
    args = [str(KIT_DIR / face) for face in faces]
    # Our own settings, whatever project this runs in: no ini file, no cache, the kit's plugin, which
    # runs the coroutine tests itself (so pytest-asyncio, if installed, stays out).
    args += ["-c", os.devnull, "--rootdir", str(KIT_DIR), "-q", "-p", "no:cacheprovider"]
    args += ["-p", "no:asyncio", "-p", "kelp.testing.plugin"]
    if select:
        args += ["-k", select]
    args += list(pytest_args)
    # kelp is already imported here, so pytest cannot rewrite the asserts of the modules its entry point
    # marks (kelp's own, not the kit's tests): harmless, and not worth a warning (an error with -W error).
    for module in ("kelp", "_kelp_pytest"):
        message = f"Module already imported so cannot be rewritten; {module}"
        args += ["-W", f"ignore:{message}:pytest.PytestAssertRewriteWarning"]
    result.exit_code = int(pytest.main(args, plugins=[_Recorder(target, result)]))
    if raise_on_failure and not result.ok:
        raise TransportCheckFailed(result)
    return result
