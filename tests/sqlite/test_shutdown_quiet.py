"""At interpreter exit a process unregisters itself from the file. Its flusher thread must be stopped
before: a heartbeat after the registration is gone reads as this process having been declared dead by
another (a false ERROR at the exit of every worker, and a store that believes its messages were taken)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import kelp
from kelp._broker.sqlite import store_for
from kelp._broker.sqlite._store import StoreOptions


def test_the_flusher_stops_before_the_registration_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "broker.db")
    connection = kelp.Connection(f"sqlite:///{path}")
    connection.connect()
    store = store_for(path, StoreOptions())
    flusher = store._flusher
    assert isinstance(flusher, threading.Thread)
    assert flusher.is_alive()
    seen: list[bool] = []
    unregister = store._unregister

    def recording(tx: Any) -> None:
        seen.append(flusher.is_alive())
        unregister(tx)

    monkeypatch.setattr(store, "_unregister", recording)
    store.shutdown()  # what the exit hook runs
    connection.close()
    assert seen == [False]
