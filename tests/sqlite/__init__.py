"""Tests of the sqlite:// transport beyond the conformance suite (multi-process, restarts, files)."""
