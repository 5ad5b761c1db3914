"""The pytest plugin of the conformance kit: which transports to test, and the fixtures the tests use.

Loaded by kelp's pytest entry point (``_kelp_pytest``, which pytest loads wherever kelp is installed) when
the run is about the kit: ``--kelp-url`` (or ``KELP_TESTING_URL``) given, or the kit's tests named, as in
``pytest --pyargs kelp.testing``; in any other test suite its fixtures do not exist. Also loaded by
``pytest_plugins = ["kelp.testing.plugin"]`` in a conftest (to run the kit among other tests), by
:func:`kelp.testing.check_transport`, and by ``-p kelp.testing.plugin`` (needed only when plugin autoloading
is off: ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).

The transports under test are *targets*: a name, a URL factory (called with a fresh temporary directory
for every test, returning the URL of a broker no other test sees) and the
:class:`~kelp.testing.Capabilities` the transport claims. They come from :func:`use_targets` (in a
``conftest.py``'s ``pytest_configure``, or through ``check_transport``) or from the command line::

    pytest --pyargs kelp.testing --kelp-url 'memory://{unique}'
    pytest --pyargs kelp.testing --kelp-url 'sqlite:///{tmp}/broker.db' --kelp-without dead_consumer
    KELP_TESTING_URL=amqp://localhost// pytest --pyargs kelp.testing --kelp-pipelined-refusals

``{unique}`` in a URL becomes a fresh hex string and ``{tmp}`` the test's temporary directory; a URL with
neither names one shared server, whose entities each test names uniquely and deletes afterwards.

Every test that takes ``broker_url`` is run once per target. A test marked ``kelp_needs(name, ...)`` is
skipped, with the reason, on a target that does not claim each name. Coroutine tests are run with
:func:`asyncio.run` unless another plugin (pytest-asyncio) already runs them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _kelp_pytest import add_options
from kelp.exceptions import KelpError
from kelp.testing._capabilities import EXCHANGE_TYPES, Capabilities

__all__ = ["Target", "url_factory", "use_targets"]

UrlFactory = Callable[[Path], str]


@dataclass(frozen=True)
class Target:
    """One transport under test: ``url_factory(tmp_dir)`` returns the URL of a broker for one test."""

    name: str
    url_factory: UrlFactory
    capabilities: Capabilities


_TARGETS = pytest.StashKey[list[Target]]()


def use_targets(config: pytest.Config, targets: Iterable[Target]) -> None:
    """Run the kit's tests against ``targets`` in this session (replacing any given on the command line)."""
    config.stash[_TARGETS] = list(targets)


def url_factory(template: str) -> UrlFactory:
    """A URL factory from a template: ``{unique}`` becomes a fresh hex string, ``{tmp}`` the test's
    temporary directory (``sqlite:///{tmp}/broker.db`` is ``sqlite:////abs/path/broker.db``)."""

    def make(tmp_path: Path) -> str:
        return template.replace("{unique}", uuid.uuid4().hex[:12]).replace("{tmp}", str(tmp_path))

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    # Also added by kelp's pytest entry point (_kelp_pytest); whichever loads first adds them.
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kelp_needs(*names): the test needs these features or exchange types (kelp.testing)"
    )
    template = config.getoption("kelp_url", None)
    if template and _TARGETS not in config.stash:
        try:
            config.stash[_TARGETS] = [_target_from_options(config, template)]
        except KelpError as exc:  # an unknown feature or exchange type: say so as pytest does
            raise pytest.UsageError(f"kelp.testing: {exc}") from exc


def _target_from_options(config: pytest.Config, template: str) -> Target:
    restart_command = config.getoption("kelp_restart_command")
    restart = None
    if restart_command:
        restart = functools.partial(subprocess.run, shlex.split(restart_command), check=True)
    exchange_types = config.getoption("kelp_exchange_types")  # None: all
    capabilities = Capabilities(
        name=template.split(":", 1)[0],
        refusal_raises=not config.getoption("kelp_pipelined_refusals"),
        shared_server="{unique}" not in template and "{tmp}" not in template,
        exchange_types=EXCHANGE_TYPES if exchange_types is None else frozenset(_split(exchange_types)),
        restart=restart,
    )
    return Target(
        capabilities.name,
        url_factory(template),
        capabilities.without(*_split(config.getoption("kelp_without"))),
    )


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kelp_target" not in metafunc.fixturenames:
        return
    targets = metafunc.config.stash.get(_TARGETS, None)
    if not targets:
        raise pytest.UsageError(
            "kelp.testing has no transport to test: give --kelp-url URL (or KELP_TESTING_URL), "
            "or call kelp.testing.plugin.use_targets() from a conftest's pytest_configure"
        )
    metafunc.parametrize("kelp_target", targets, ids=[target.name for target in targets], indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    target = callspec.params.get("kelp_target") if callspec is not None else None
    if not isinstance(target, Target):
        return
    for mark in item.iter_markers("kelp_needs"):
        for need in mark.args:
            if not target.capabilities.supports(need):
                pytest.skip(f"{target.name} does not claim {need!r}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run the kit's coroutine tests (and hypothesis tests whose body is a coroutine) on a fresh event
    loop each; a test another plugin already turned into a plain function is left to pytest, and so is
    every test that is not the kit's."""
    function = pyfuncitem.obj
    if not getattr(function, "__module__", "").startswith("kelp.testing."):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    if inspect.iscoroutinefunction(function):
        asyncio.run(function(**arguments))
        return True
    hypothesis: Any = getattr(function, "hypothesis", None)
    inner = getattr(hypothesis, "inner_test", None)
    if hypothesis is None or inner is None or not inspect.iscoroutinefunction(inner):
        return None

    @functools.wraps(inner)
    def run_inner(*args: Any, **kwargs: Any) -> None:
        asyncio.run(inner(*args, **kwargs))

    hypothesis.inner_test = run_inner
    try:
        function(**arguments)
    finally:
        hypothesis.inner_test = inner
    return True


# --- fixtures the tests take ---------------------------------------------------------------------------


@pytest.fixture
def kelp_target(request: pytest.FixtureRequest) -> Target:
    """The target this test runs against (parametrized over every target)."""
    target: Target = request.param
    return target


@pytest.fixture
def transport(kelp_target: Target) -> str:
    """The name of the transport under test."""
    return kelp_target.name


@pytest.fixture
def capabilities(kelp_target: Target) -> Capabilities:
    """What the transport under test claims."""
    return kelp_target.capabilities


@pytest.fixture
def broker_url(kelp_target: Target, tmp_path: Path) -> str:
    """The URL of a fresh broker, isolated from every other test's."""
    return kelp_target.url_factory(tmp_path)


@pytest.fixture
def names(request: pytest.FixtureRequest, kelp_target: Target) -> Iterator[Callable[[str], str]]:
    """``names("q") -> "q-<hex>"``: entity names unique across tests sharing one broker; on a shared server
    the named queues and exchanges are deleted (best effort) when the test ends."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        made.append(name)
        return name

    yield make
    if made and kelp_target.capabilities.shared_server:
        _delete_entities(request.getfixturevalue("broker_url"), made)


def _delete_entities(url: str, entity_names: list[str]) -> None:
    """Best-effort cleanup on a shared broker: each name may be a queue, an exchange, both or neither."""
    import kelp

    try:
        with kelp.Connection(url) as conn:
            for name in entity_names:
                for entity in (kelp.Queue(name), kelp.Exchange(name)):
                    try:
                        entity(conn.channel()).delete()
                    except Exception:  # cleanup must never fail a test
                        pass
    except Exception:
        pass
