"""The conformance kit's public names, and the names the connection module kept when it was split."""

from __future__ import annotations

import importlib
from pathlib import Path

import kelp.testing
import kelp.testing.plugin

KIT_NAMES = {
    "ALL_FEATURES",
    "EXCHANGE_TYPES",
    "Capabilities",
    "CheckResult",
    "TransportCheckFailed",
    "add_kit_tests",
    "check_transport",
}


def test_the_kit_exports_exactly_these_names() -> None:
    assert set(kelp.testing.__all__) == KIT_NAMES
    assert set(kelp.testing.plugin.__all__) == {"Target", "url_factory", "use_targets"}


def test_every_sync_kit_module_is_generated_from_its_aio_source() -> None:
    aio = Path(kelp.testing.__file__).parent / "aio"
    sync = aio.parent / "sync"
    sources = sorted(path.name for path in aio.glob("*.py") if path.name != "__init__.py")
    assert sources == sorted(path.name for path in sync.glob("*.py") if path.name != "__init__.py")
    for name in sources:
        first_line = (sync / name).read_text(encoding="utf-8").splitlines()[0]
        assert (
            first_line == f"# Generated from src/kelp/testing/aio/{name} by scripts/unasync.py; do not edit."
        )


def test_the_connection_modules_still_export_what_they_did_before_the_split() -> None:
    names = {
        "DEFAULT_URL", "PLANNED", "SCHEME_ALIASES", "TRANSPORTS", "Channel", "Connection",
        "default_sqlite_path", "resolve_transport",
    }  # fmt: skip
    for module_name in ("kelp.connection", "kelp.aio.connection"):
        module = importlib.import_module(module_name)
        missing = {name for name in names if not hasattr(module, name)}
        assert not missing, f"{module_name} lacks {sorted(missing)}"
