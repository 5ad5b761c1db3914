"""A process's topology snapshot follows other processes' changes through the log, not by rereading it all.

Two stores on one file stand for two processes: one declares, binds, unbinds and deletes at random; after
each change the other's snapshot must equal one read afresh from the tables, and be derived, not reread.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kelp._broker.sqlite import _topology
from kelp._broker.sqlite._store import SqliteStore, StoreOptions
from kelp._broker.sqlite._topology import LOG_KEEP, Topology, load_topology

pytestmark = pytest.mark.timeout(120)


class _Waker:
    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


def _fresh(path: Path) -> Topology:
    db = sqlite3.connect(path)
    try:
        version = db.execute("SELECT value FROM meta WHERE key='topology'").fetchone()[0]
        return load_topology(db, version)
    finally:
        db.close()


def _shape(topo: Topology) -> tuple[Any, ...]:
    return (
        topo.version,
        sorted((x.name, x.type, x.durable, x.auto_delete) for x in topo.exchanges.values()),
        sorted((q.name, q.durable, q.args.expires) for q in topo.queues.values()),
        sorted((s, k, d, r, sorted(a.items())) for s, k, d, r, a in topo.bindings()),
        topo.expiring,
    )


def _routes(topo: Topology, keys: list[str]) -> list[list[str]]:
    return [sorted(topo.route(name, key, {"h": key})) for name in sorted(topo.exchanges) for key in keys]


@pytest.fixture
def two_stores(tmp_path: Path) -> Any:
    path = tmp_path / "t.db"
    stores = [SqliteStore(str(path), StoreOptions()) for _ in range(2)]
    for store in stores:
        store.attach()
    yield path, stores[0], stores[1]
    for store in stores:
        store.detach()


@pytest.mark.parametrize("seed", range(4))
def test_the_other_process_derives_every_change(
    two_stores: Any, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    path, writer, reader = two_stores
    conn = writer.session.connect(_Waker())
    reader.bindings()  # the reader's first snapshot is read from the tables
    full_loads = 0
    load = _topology.load_topology

    def counting_load(db: sqlite3.Connection, version: int) -> Topology:
        nonlocal full_loads
        full_loads += 1
        return load(db, version)

    monkeypatch.setattr(_topology, "load_topology", counting_load)
    rng = random.Random(seed)
    queues = [f"q{i}" for i in range(6)]
    exchanges = [("t", "topic"), ("d", "direct"), ("f", "fanout"), ("h", "headers")]
    keys = ["a.b", "a", "", "b.a.c", "c"]
    patterns = ["a.*", "#", "a.#", "*.a.#", "c", "a.b", ""]
    for _ in range(120):
        op = rng.choice(
            ["queue", "exchange", "bind", "bind", "bind", "unbind", "delete_q", "delete_x", "e2e"]
        )
        name, kind = rng.choice(exchanges)
        queue = rng.choice(queues)
        key = rng.choice(patterns)
        args = {"x-match": "any", "h": rng.choice(keys)} if kind == "headers" else None
        exists = name in reader._topo.exchanges
        try:
            if op == "queue":
                expires = {"x-expires": 600_000} if rng.random() < 0.3 else None
                writer.declare_queue(conn, queue, True, False, False, expires, False)
            elif op == "exchange":
                writer.declare_exchange(name, kind, True, False, False, None, False)
            elif op == "bind" and exists:
                writer.bind(conn, "queue", queue, name, key, args)
            elif op == "unbind" and exists:
                writer.unbind(conn, "queue", queue, name, key, args)
            elif op == "delete_q":
                writer.delete_queue(conn, queue, False, False)
            elif op == "delete_x":
                writer.delete_exchange(name, False)
            elif op == "e2e" and exists:
                other, _ = rng.choice(exchanges)
                if other in reader._topo.exchanges:
                    writer.bind(conn, "exchange", other, name, key, args)
        except (
            Exception
        ) as exc:  # a refused operation (queue missing, redeclared differently) changes nothing
            if type(exc).__name__ not in ("NotFound", "PreconditionFailed"):
                raise
        reader.bindings()  # one transaction: the reader catches up
        fresh = _fresh(path)
        assert _shape(reader._topo) == _shape(fresh)
        assert _routes(reader._topo, keys) == _routes(fresh, keys)
        assert _shape(writer._topo) == _shape(fresh)
    assert full_loads == 0
    writer.session.disconnect(conn)


def test_a_gap_in_the_log_or_a_snapshot_too_old_reads_the_tables(
    two_stores: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, writer, reader = two_stores
    conn = writer.session.connect(_Waker())
    writer.declare_queue(conn, "q", True, False, False, None, False)
    reader.bindings()
    calls: list[int] = []
    load = _topology.load_topology
    monkeypatch.setattr(_topology, "load_topology", lambda db, v: calls.append(v) or load(db, v))
    # A writer that does not log (an older kelp): the version moves without a row in the log.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "INSERT INTO queues (name, durable, auto_delete, arguments, last_used) VALUES ('old', 1, 0, '{}', 0)"
    )
    db.execute("UPDATE meta SET value = value + 1 WHERE key='topology'")
    db.close()
    writer.declare_queue(conn, "q2", True, False, False, None, False)
    reader.bindings()
    assert calls  # reread
    assert set(reader._topo.queues) == {"q", "q2", "old"}
    calls.clear()
    monkeypatch.setattr(_topology, "LOG_KEEP", 3)
    for n in range(5):
        writer.declare_queue(conn, f"more{n}", True, False, False, None, False)
    reader.bindings()
    assert calls
    assert _shape(reader._topo) == _shape(_fresh(path))
    assert LOG_KEEP >= 1000  # the real log covers a burst of declarations
    writer.session.disconnect(conn)
