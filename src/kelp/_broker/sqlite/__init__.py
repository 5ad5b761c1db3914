"""The SQLite engine behind ``sqlite://`` (hand-written, sync, thread-safe; shared by both faces)."""

from kelp._broker.sqlite._store import SqliteStore, StoreOptions, store_for

__all__ = ["SqliteStore", "StoreOptions", "store_for"]
