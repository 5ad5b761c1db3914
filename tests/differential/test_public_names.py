"""Every public name of the Kombu modules in its API reference exists in kelp (and in ``kelp.aio`` where the
module has an asyncio twin), except the names docs/migrating-from-kombu.md lists with a reason; and every
argument Kombu's functions, classes and methods take by keyword, kelp's take by keyword too, except the
arguments the document lists.

The names are read from Kombu itself: each module's ``__all__``, and for each class there the public
attributes of the class and of an instance (where one is cheap to build), so instance attributes such as
``Queue.durable`` count too. The list of exceptions is parsed from the document's table, and a name listed
there that kelp does have fails the test as well, so the document and the code cannot drift apart.
"""

from __future__ import annotations

import importlib
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import kombu
import kombu.common
import kombu.exceptions
import pytest

import kelp
import kelp.aio
import kelp.aio.common
import kelp.common
import kelp.exceptions

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating-from-kombu.md"
TABLE_HEADING = "## Kombu names kelp does not have"
ARGUMENTS_HEADING = "## Kombu arguments kelp does not take"

#: Kombu module -> the kelp modules that must have its names (the sync module and its asyncio twin; the
#: pure modules are one module for both faces).
MODULES = {
    "kombu": ("kelp", "kelp.aio"),
    "kombu.connection": ("kelp.connection", "kelp.aio.connection"),
    "kombu.entity": ("kelp.entity",),
    "kombu.messaging": ("kelp.messaging", "kelp.aio.messaging"),
    "kombu.message": ("kelp.message", "kelp.aio.message"),
    "kombu.common": ("kelp.common", "kelp.aio.common"),
    "kombu.simple": ("kelp.simple", "kelp.aio.simple"),
    "kombu.mixins": ("kelp.mixins", "kelp.aio.mixins"),
    "kombu.pools": ("kelp.pools", "kelp.aio.pools"),
    "kombu.serialization": ("kelp.serialization",),
    "kombu.compression": ("kelp.compression",),
    "kombu.exceptions": ("kelp.exceptions",),
}


def _instances(lib: Any, common: Any, conn: Any) -> list[Any]:
    """Instances of the classes whose attributes are set in ``__init__``."""
    return [
        conn,
        lib.Exchange("x"),
        lib.Queue("q"),
        lib.binding(lib.Exchange("x")),
        lib.Producer(conn),
        lib.Consumer(conn, []),
        common.Broadcast("b"),
    ]


def _instance_of(cls: type, instances: list[Any]) -> Any:
    return next((instance for instance in instances if type(instance) is cls), None)


def _has(obj: Any, name: str) -> bool:
    # A property may refuse to answer (an unbound entity's ``channel``): it exists all the same.
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    except Exception:
        return True
    return True


def _public(obj: Any) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def missing_names() -> set[str]:
    """Kombu's public names that some kelp face lacks, as ``module.name`` or ``module.Class.attribute``
    (the module being where Kombu defines the class)."""
    url = f"memory://{uuid.uuid4().hex[:12]}"
    kombu_conn = kombu.Connection("memory://")
    faces = {"kelp": kelp.Connection(url), "kelp.aio": kelp.aio.Connection(url)}
    try:
        kombu_instances = _instances(kombu, kombu.common, kombu_conn)
        kelp_instances = {
            "kelp": _instances(kelp, kelp.common, faces["kelp"]),
            "kelp.aio": _instances(kelp.aio, kelp.aio.common, faces["kelp.aio"]),
        }
        missing: set[str] = set()
        for kombu_name, kelp_names in MODULES.items():
            kombu_module = importlib.import_module(kombu_name)
            for kelp_name in kelp_names:
                module = importlib.import_module(kelp_name)
                face = "kelp.aio" if kelp_name.startswith("kelp.aio") else "kelp"
                for name in kombu_module.__all__:
                    if not hasattr(module, name):
                        missing.add(f"{kombu_name}.{name}")
                        continue
                    theirs = getattr(kombu_module, name)
                    if not inspect.isclass(theirs):
                        continue
                    ours = getattr(module, name)
                    wanted = _public(theirs) | _public(_instance_of(theirs, kombu_instances))
                    ours_instance = _instance_of(ours, kelp_instances[face])
                    for attribute in sorted(wanted):
                        if not _has(ours, attribute) and not _has(ours_instance, attribute):
                            missing.add(f"{theirs.__module__}.{theirs.__qualname__}.{attribute}")
        return missing
    finally:
        kombu_conn.release()
        faces["kelp"].close()


def documented_names(heading: str = TABLE_HEADING) -> dict[str, str]:
    """A table of docs/migrating-from-kombu.md (the section under ``heading``): each listed name -> its
    reason."""
    text = DOC.read_text()
    assert heading in text, f"{DOC} has no section {heading!r}"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        names, reason = cells
        assert reason, f"{names} is listed without a reason"
        for name in re.findall(r"`([^`]+)`", names):
            assert name not in listed, f"{name} is listed twice"
            listed[name] = reason
    return listed


@pytest.fixture(scope="module")
def missing() -> set[str]:
    return missing_names()


def test_every_kombu_name_exists_or_is_documented(missing: set[str]) -> None:
    undocumented = sorted(missing - set(documented_names()))
    assert not undocumented, f"Kombu names kelp lacks and {DOC.name} does not list: {undocumented}"


def test_every_documented_name_is_really_missing(missing: set[str]) -> None:
    stale = sorted(set(documented_names()) - missing)
    assert not stale, f"{DOC.name} lists names kelp now has (remove them from the table): {stale}"


def _keywords(obj: Any) -> tuple[set[str], bool] | None:
    """The names ``obj`` accepts by keyword, and whether it takes ``**kwargs``; None without a signature."""
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self", "cls"}, any(p.kind is p.VAR_KEYWORD for p in parameters)


def _methods(cls: type) -> list[str]:
    """The public methods of ``cls`` (plain, static and class methods; not properties)."""
    return [
        name
        for name in sorted(_public(cls))
        if isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod))
        or inspect.isfunction(inspect.getattr_static(cls, name))
    ]


def _callables(kombu_name: str, name: str, theirs: Any) -> list[tuple[str, tuple[str, ...], Any]]:
    """``(label, path in the kelp module, Kombu's callable)`` for a name of a Kombu module: the function, or
    the class (its constructor) and each of its public methods."""
    if not inspect.isclass(theirs):
        return [(f"{kombu_name}.{name}", (name,), theirs)] if callable(theirs) else []
    label = f"{theirs.__module__}.{theirs.__qualname__}"
    found = [(label, (name,), theirs)]
    found += [(f"{label}.{method}", (name, method), getattr(theirs, method)) for method in _methods(theirs)]
    return found


def missing_arguments() -> dict[str, set[str]]:
    """Arguments Kombu takes by keyword and some kelp face does not, as ``label(argument)`` -> the kelp
    modules lacking it. The label is ``module.function``, or the class (Kombu's defining module and name) for
    its constructor, or ``Class.method``. A kelp callable taking ``**kwargs`` accepts every name; names kelp
    lacks altogether are the business of the name test above."""
    missing: dict[str, set[str]] = {}
    for kombu_name, kelp_names in MODULES.items():
        kombu_module = importlib.import_module(kombu_name)
        for kelp_name in kelp_names:
            module = importlib.import_module(kelp_name)
            for name in kombu_module.__all__:
                for label, path, theirs in _callables(kombu_name, name, getattr(kombu_module, name)):
                    ours: Any = module
                    for part in path:
                        ours = getattr(ours, part, None)
                    wanted, accepted = _keywords(theirs), _keywords(ours)
                    if ours is None or wanted is None or accepted is None or accepted[1]:
                        continue
                    for argument in wanted[0] - accepted[0]:
                        missing.setdefault(f"{label}({argument})", set()).add(kelp_name)
    return missing


@pytest.fixture(scope="module")
def missing_args() -> dict[str, set[str]]:
    return missing_arguments()


def test_every_kombu_argument_is_accepted_or_documented(missing_args: dict[str, set[str]]) -> None:
    documented = documented_names(ARGUMENTS_HEADING)
    undocumented = {label: sorted(where) for label, where in missing_args.items() if label not in documented}
    assert not undocumented, f"Kombu arguments kelp refuses and {DOC.name} does not list: {undocumented}"


def test_every_documented_argument_is_really_refused(missing_args: dict[str, set[str]]) -> None:
    stale = sorted(set(documented_names(ARGUMENTS_HEADING)) - set(missing_args))
    assert not stale, f"{DOC.name} lists arguments kelp now takes (remove them from the table): {stale}"


def test_argument_walk_sees_renamed_and_kwargs_parameters() -> None:
    # The walk itself: a renamed parameter is caught, **kwargs accepts anything, properties are not methods.
    def kombu_like(body: Any, content_type: Any) -> None: ...

    def renamed(body: Any, method: Any) -> None: ...

    def open_ended(body: Any, **kwargs: Any) -> None: ...

    assert _keywords(kombu_like) == ({"body", "content_type"}, False)
    assert _keywords(renamed) == ({"body", "method"}, False)
    assert _keywords(open_ended) == ({"body"}, True)
    assert "channel" not in _methods(kombu.Exchange)
    assert "declare" in _methods(kombu.Exchange)


#: (class, base) pairs where "is a subclass of" differs between kombu.exceptions and kelp.exceptions, and
#: whether it holds in kelp. docs/migrating-from-kombu.md ("Every kelp exception is a KombuError") says why.
HIERARCHY_DIFFERENCES = {
    ("ConnectionError", "KombuError"): True,
    ("ConnectionError", "OperationalError"): True,
    ("ChannelError", "KombuError"): True,
    ("ResourceError", "KombuError"): True,
    ("InconsistencyError", "KombuError"): True,
    ("LimitExceeded", "ResourceError"): True,
    ("ConnectionLimitExceeded", "ResourceError"): True,
    ("ChannelLimitExceeded", "ResourceError"): True,
    ("ResourceError", "ConnectionError"): False,
    ("InconsistencyError", "ConnectionError"): False,
}


def test_exception_hierarchy_matches_kombu_except_documented() -> None:
    names = [
        name
        for name in kombu.exceptions.__all__
        if inspect.isclass(getattr(kombu.exceptions, name)) and hasattr(kelp.exceptions, name)
    ]
    differences = {}
    for name in names:
        for base in names:
            ours = issubclass(getattr(kelp.exceptions, name), getattr(kelp.exceptions, base))
            if ours != issubclass(getattr(kombu.exceptions, name), getattr(kombu.exceptions, base)):
                differences[(name, base)] = ours
    assert differences == HIERARCHY_DIFFERENCES
    assert "Every kelp exception is a `KombuError`" in DOC.read_text()
