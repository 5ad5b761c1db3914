"""The ``postgresql://`` store (see :mod:`kelp._broker.postgres._store`)."""

from kelp._broker.postgres._store import PostgresStore, store_for

__all__ = ["PostgresStore", "store_for"]
