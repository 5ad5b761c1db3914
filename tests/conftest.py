"""Settings for the whole test session."""

from __future__ import annotations

import os
import tempfile

# Tests must never touch the user's default kelp database (~/.local/share/kelp/kelp.db): any code path
# that falls back to the embedded default gets a private directory instead. Set before kelp is imported
# by the test modules, since the default URL is computed at import.
os.environ.setdefault("KELP_HOME", tempfile.mkdtemp(prefix="kelp-test-home-"))
os.environ.pop("KELP_URL", None)

# The conformance kit's fixtures and options (kelp.testing); tests/conformance picks the transports.
pytest_plugins = ["kelp.testing.plugin"]
