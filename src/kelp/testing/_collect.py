"""Bring the kit's tests into another test module, one class per kit module (``TestAcks``, ``TestTtl``...).

kelp's own ``tests/conformance`` and a third-party transport's test suite use this to run the kit among
their other tests, with their own ``conftest.py`` choosing the targets (see ``plugin.use_targets``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import MutableMapping
from types import ModuleType
from typing import Any

__all__ = ["FACES", "add_kit_tests", "kit_modules"]

#: The two faces of the API the kit tests: ``aio`` (kelp.aio, the source) and ``sync`` (generated).
FACES = ("aio", "sync")


def kit_modules(face: str) -> list[ModuleType]:
    """The kit's test modules for ``face`` ("aio" or "sync"), imported."""
    if face not in FACES:
        raise ValueError(f"face must be one of {FACES}, not {face!r}")
    package = importlib.import_module(f"kelp.testing.{face}")
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("test_")
    ]


def add_kit_tests(namespace: MutableMapping[str, Any], face: str) -> None:
    """Put one ``Test<Module>`` class per kit module of ``face`` into ``namespace`` (a test module's
    ``globals()``), carrying the module's tests and its ``pytestmark``, for pytest to collect there."""
    for module in kit_modules(face):
        tests: dict[str, Any] = {
            name: staticmethod(obj) for name, obj in vars(module).items() if name.startswith("test_")
        }
        if hasattr(module, "pytestmark"):
            tests["pytestmark"] = module.pytestmark
        title = "".join(part.capitalize() for part in module.__name__.rsplit(".", 1)[1].split("_")[1:])
        name = f"Test{title}"
        tests["__module__"] = namespace.get("__name__", __name__)
        tests["__qualname__"] = name
        namespace[name] = type(name, (), tests)
