"""Loads the kit's plugin when the kit is collected as tests (``pytest --pyargs kelp.testing``)."""

pytest_plugins = ["kelp.testing.plugin"]
