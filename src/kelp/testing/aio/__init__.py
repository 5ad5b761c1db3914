"""The conformance tests for ``kelp.aio``: the single source; ``scripts/unasync.py`` generates ``../sync``."""
