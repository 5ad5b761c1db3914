"""The conformance tests for the sync ``kelp`` API. Package marker only: every other module here is generated
from ``../aio`` by ``scripts/unasync.py`` (which leaves ``__init__.py`` alone)."""
