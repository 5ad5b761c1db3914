"""The conformance kit's sync tests (``kelp.testing.sync``), one class per kit module, on the transports
``conftest.py`` selects."""

from kelp.testing import add_kit_tests

add_kit_tests(globals(), "sync")
