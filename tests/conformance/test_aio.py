"""The conformance kit's asyncio tests (``kelp.testing.aio``), one class per kit module, on the transports
``conftest.py`` selects."""

from kelp.testing import add_kit_tests

add_kit_tests(globals(), "aio")
