"""SQLite-transport benchmark: kelp ``sqlite://`` vs Kombu ``sqla+sqlite://`` vs a plain sqlite3 loop.

One run of this script, same machine, every scenario in fresh subprocesses and fresh database files; the
throughput scenarios run ``--repeats`` times (default 3), the libraries taking turns within each round, and
the best run is reported, the median beside it (a 2-core machine shared with everything else is noisy:
single runs vary by a fifth):

1. **publish** - one process, a plain ``Producer.publish`` loop, default options, of N persistent
   ~256-byte JSON messages to a durable queue (kelp: each committed before its publish returns).
   **transient** - the same loop with ``delivery_mode=1`` (kelp: group commit; the buffer is committed
   before the clock stops).
2. **consume+ack** - one process, a Consumer (prefetch 100) acking every message, until all N arrived.
3. **2x2 end-to-end** - 2 producer and 2 consumer processes, N messages in total; from the start of the
   producers until the consumers acked the last one.
4. **latency** - one producer process publishes a message every 5 ms (low load) carrying its send time;
   a consumer in another process records arrival - send; p50 and p99.

The floor is a plain ``sqlite3`` loop (WAL, synchronous=NORMAL): one INSERT committed per message for
publish (what a persistent publish must do), 100 inserts per transaction for transient, select-and-delete
100 at a time for consume. Kombu's virtual transport gets ``polling_interval=0`` for
consume throughput and its default for latency (which is what its users get).

    python bench/sqlite.py [--messages N] [--kombu-messages N] [--repeats N] [--libraries kelp,kombu,sqlite3]
                           [--json]

Kombu runs fewer messages by default (it manages about a hundred per second here); rates are per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

# bench/ holds amqp.py and redis.py, which would shadow the packages of those names that Kombu imports.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

BODY = {"id": "5f0c6f0e-3b1a-4f43-9d0e-6a4c1d2b7e90", "type": "order.created", "note": "x" * 170}
TARGETS = {
    "publish": 20_000,
    "transient": 60_000,
    "consume": 30_000,
    "e2e": 20_000,
    "p50_ms": 5.0,
    "p99_ms": 20.0,
}
#: kelp's persistent publish against the plain sqlite3 loop committing each message (issue #9).
PUBLISH_RATIO = 0.7


# --- children ------------------------------------------------------------------------------------------


def _kelp_publish(url: str, n: int, start: int = 0, delivery_mode: int = 2) -> float:
    from kelp import Connection, Exchange, Queue

    queue = Queue("bench", Exchange("bench", "direct"), "bench", durable=True, auto_delete=False)
    with Connection(url) as conn:
        producer = conn.Producer()
        producer.declare()
        t0 = time.perf_counter()
        for i in range(start, start + n):
            producer.publish(
                {**BODY, "n": i},
                exchange="bench",
                routing_key="bench",
                declare=[queue],
                delivery_mode=delivery_mode,
            )
        conn.flush()  # commits what is buffered (transient messages; persistent ones are committed)
        return time.perf_counter() - t0


def _kelp_publish_transient(url: str, n: int, start: int = 0) -> float:
    return _kelp_publish(url, n, start, delivery_mode=1)


def _kelp_consume(url: str, n: int, idle: float = 10.0) -> float:
    from kelp import Connection, Exchange, Queue

    queue = Queue("bench", Exchange("bench", "direct"), "bench", durable=True, auto_delete=False)
    got = [0]

    def on_message(body: Any, message: Any) -> None:
        got[0] += 1
        message.ack()

    with Connection(url) as conn, conn.Consumer([queue], callbacks=[on_message], prefetch_count=100):
        t0 = time.perf_counter()
        if n < 0:
            return _until_idle(conn, got)
        while got[0] < n:
            conn.drain_events(timeout=idle)
        conn.flush()  # commits the buffered acks
        return time.perf_counter() - t0


def _until_idle(conn: Any, got: list[int]) -> Any:
    """Consume until nothing came for a second; return (count, wall-clock time of the last message)."""
    last = time.time()
    while True:
        try:
            conn.drain_events(timeout=1.0 if got[0] else 30.0)
            last = time.time()
        except TimeoutError:
            return [got[0], last]


def _kombu_queue() -> Any:
    from kombu import Exchange, Queue

    return Queue("bench", Exchange("bench", "direct"), "bench", durable=True)


def _kombu_publish(url: str, n: int, start: int = 0) -> float:
    from kombu import Connection

    queue = _kombu_queue()
    with Connection(url) as conn:
        producer = conn.Producer()
        t0 = time.perf_counter()
        for i in range(start, start + n):
            producer.publish({**BODY, "n": i}, exchange=queue.exchange, routing_key="bench", declare=[queue])
        return time.perf_counter() - t0


def _kombu_consume(url: str, n: int, idle: float = 10.0) -> float:
    from kombu import Connection

    queue = _kombu_queue()
    got = [0]

    def on_message(body: Any, message: Any) -> None:
        got[0] += 1
        message.ack()

    with Connection(url) as conn:
        conn.transport.polling_interval = 0  # its transport options go to SQLAlchemy's create_engine
        with conn.Consumer([queue], callbacks=[on_message], prefetch_count=100, accept=["json"]):
            t0 = time.perf_counter()
            if n < 0:
                return _until_idle(conn, got)
            while got[0] < n:
                conn.drain_events(timeout=idle)
            return time.perf_counter() - t0


def _raw_open(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # setting it again can meet a lock
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    # No AUTOINCREMENT: kelp's own table has none (its counter is one more page written per commit), and
    # a floor that pays for it would flatter the ratio.
    db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return db


def _raw_publish(path: str, n: int, start: int = 0) -> float:
    """One INSERT per message, each committed on its own (autocommit)."""
    db = _raw_open(path)
    t0 = time.perf_counter()
    for i in range(start, start + n):
        db.execute("INSERT INTO q (body) VALUES (?)", (json.dumps({**BODY, "n": i}).encode(),))
    return time.perf_counter() - t0


def _raw_publish_batched(path: str, n: int, start: int = 0) -> float:
    """100 INSERTs per transaction."""
    db = _raw_open(path)
    t0 = time.perf_counter()
    for base in range(start, start + n, 100):
        db.execute("BEGIN IMMEDIATE")
        for i in range(base, min(base + 100, start + n)):
            db.execute("INSERT INTO q (body) VALUES (?)", (json.dumps({**BODY, "n": i}).encode(),))
        db.execute("COMMIT")
    return time.perf_counter() - t0


def _raw_consume(path: str, n: int, idle: float = 10.0) -> Any:
    db = _raw_open(path)
    got = 0
    t0 = time.perf_counter()
    last = time.monotonic()
    last_wall = time.time()
    if n < 0:
        idle = 30.0
    while got < n or n < 0:
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute("DELETE FROM q WHERE id IN (SELECT id FROM q ORDER BY id LIMIT 100) RETURNING body")
        batch = [json.loads(body) for (body,) in rows]
        db.execute("COMMIT")
        got += len(batch)
        if batch:
            last = time.monotonic()
            last_wall = time.time()
            if n < 0:
                idle = 1.0
        elif time.monotonic() - last > idle:
            if n < 0:
                return [got, last_wall]
            raise RuntimeError(f"sqlite3 floor: {got} of {n} arrived")
        else:
            time.sleep(0.0005)
    return time.perf_counter() - t0


def _latency_produce(library: str, url: str, n: int, interval: float) -> None:
    if library == "kelp":
        from kelp import Connection
    else:
        from kombu import Connection  # type: ignore[no-redef]
    queue = _kombu_queue() if library == "kombu" else None
    if queue is None:
        from kelp import Exchange, Queue

        queue = Queue("bench", Exchange("bench", "direct"), "bench", durable=True, auto_delete=False)
    with Connection(url) as conn:
        producer = conn.Producer()
        producer.publish(
            {"t": 0.0, "warmup": True}, exchange=queue.exchange, routing_key="bench", declare=[queue]
        )
        time.sleep(0.5)
        for _ in range(n):
            producer.publish(
                {"t": time.time()}, exchange=queue.exchange, routing_key="bench", declare=[queue]
            )
            time.sleep(interval)


def _latency_consume(library: str, url: str, n: int) -> list[float]:
    if library == "kelp":
        from kelp import Connection, Exchange, Queue

        queue: Any = Queue("bench", Exchange("bench", "direct"), "bench", durable=True, auto_delete=False)
    else:
        from kombu import Connection  # type: ignore[no-redef]

        queue = _kombu_queue()
    samples: list[float] = []

    def on_message(body: Any, message: Any) -> None:
        now = time.time()
        if not body.get("warmup"):
            samples.append((now - body["t"]) * 1000)
        message.ack()

    with Connection(url) as conn, conn.Consumer([queue], callbacks=[on_message], accept=["json"]):
        print("ready", flush=True)
        while len(samples) < n:
            conn.drain_events(timeout=30)
    return samples


def child(argv: list[str]) -> None:
    """Run one scenario part and print its result as JSON on the last line."""
    role, library, url = argv[0], argv[1], argv[2]
    n = int(argv[3])
    start = int(argv[4]) if len(argv) > 4 else 0
    table = {
        ("publish", "kelp"): _kelp_publish,
        ("publish", "kombu"): _kombu_publish,
        ("publish", "sqlite3"): _raw_publish,
        ("transient", "kelp"): _kelp_publish_transient,
        ("transient", "sqlite3"): _raw_publish_batched,
    }
    if role in ("publish", "transient"):
        result: Any = table[(role, library)](url, n, start)
    elif role == "consume":
        consume = {"kelp": _kelp_consume, "kombu": _kombu_consume, "sqlite3": _raw_consume}[library]
        result = consume(url, n)
    elif role == "latency-produce":
        _latency_produce(library, url, n, 0.005)
        result = None
    elif role == "latency-consume":
        result = _latency_consume(library, url, n)
    else:
        raise SystemExit(f"unknown role {role}")
    print(json.dumps(result), flush=True)


# --- the parent ------------------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float = 600) -> Any:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _url(library: str, path: str) -> str:
    return {"kelp": f"sqlite:///{path}", "kombu": f"sqla+sqlite:///{path}", "sqlite3": path}[library]


def _throughput(library: str, tmp: str, n: int) -> dict[str, float]:
    """One run of the three throughput scenarios, on fresh database files in ``tmp``."""
    out: dict[str, float] = {}
    url = _url(library, os.path.join(tmp, "single.db"))
    out["publish"] = n / _result(_spawn("publish", library, url, str(n)))
    out["consume"] = n / _result(_spawn("consume", library, url, str(n)))
    if library != "kombu":  # (Kombu's transport stores every message alike)
        # A file of its own: transient messages do not outlive a restart, which a consumer opening the
        # file alone would be.
        url = _url(library, os.path.join(tmp, "transient.db"))
        out["transient"] = n / _result(_spawn("transient", library, url, str(n)))

    url = _url(library, os.path.join(tmp, "e2e.db"))
    if library != "sqlite3":  # declare the queue first, so no message is published before it exists
        _result(_spawn("publish", library, url, "1"))
        _result(_spawn("consume", library, url, "1"))
    half = n // 2
    consumers = [_spawn("consume", library, url, "-1") for _ in range(2)]
    time.sleep(1.0)  # let the consumers start (they wait for the first message)
    t0 = time.time()
    producers = [_spawn("publish", library, url, str(half), str(i * half)) for i in range(2)]
    for proc in producers:
        _result(proc)
    counts = [_result(proc) for proc in consumers]
    received = sum(count for count, _ in counts)
    if received != 2 * half:
        raise RuntimeError(f"{library}: 2x2 consumers got {received} of {2 * half} messages")
    out["e2e"] = 2 * half / (max(last for _, last in counts) - t0)
    return out


def bench(libraries: list[str], counts: dict[str, int], latency_n: int, repeat: int) -> dict[str, Any]:
    """Every library's throughput scenarios ``repeat`` times, the libraries taking turns within each
    round (so that a change in the machine's load hits them alike), then each library's latency."""
    runs: dict[str, list[dict[str, float]]] = {library: [] for library in libraries}
    for round_ in range(repeat):
        for library in libraries:
            print(f"round {round_ + 1} of {repeat}: {library}...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                runs[library].append(_throughput(library, tmp, counts[library]))
    results: dict[str, dict[str, float]] = {}
    for library in libraries:
        out: dict[str, float] = {}
        for key in ("publish", "transient", "consume", "e2e"):
            if key in runs[library][0]:
                out[key] = max(run[key] for run in runs[library])
                out[key + "_median"] = statistics.median(run[key] for run in runs[library])
        if library != "sqlite3":
            out.update(_latency(library, latency_n))
        results[library] = out
    return results


def _latency(library: str, latency_n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = _url(library, os.path.join(tmp, "latency.db"))
        _result(_spawn("publish", library, url, "1"))
        _result(_spawn("consume", library, url, "1"))
        consumer = _spawn("latency-consume", library, url, str(latency_n))
        assert consumer.stdout is not None
        consumer.stdout.readline()  # "ready"
        producer = _spawn("latency-produce", library, url, str(latency_n + 1))
        samples = sorted(_result(consumer))
        _result(producer)
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument(
        "--kombu-messages", type=int, default=2_000, help="Kombu's sqla transport does ~100 msg/s here"
    )
    parser.add_argument("--latency-samples", type=int, default=400)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the throughput scenarios; the best is reported"
    )
    parser.add_argument("--libraries", default="kelp,kombu,sqlite3")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    libraries = args.libraries.split(",")
    counts = {library: args.kombu_messages if library == "kombu" else args.messages for library in libraries}
    results = bench(libraries, counts, args.latency_samples, args.repeats)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    _print_table(results)
    return 0


def _print_table(results: dict[str, dict[str, float]]) -> None:
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    keys = ("publish", "transient", "consume", "e2e")
    nan = float("nan")
    header = (
        f"{'':10} {'publish/s':>11} {'transient/s':>11} {'consume/s':>11} {'2x2 e2e/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    for library, r in results.items():
        print(
            f"{library:10} "
            + " ".join(f"{r.get(key, nan):11,.0f}" for key in keys)
            + f" {r.get('p50_ms', nan):8.2f} {r.get('p99_ms', nan):8.2f}"
        )
        print(f"{'  median':10} " + " ".join(f"{r.get(key + '_median', nan):11,.0f}" for key in keys))
    kelp = results.get("kelp")
    if kelp is None:
        return
    print(
        f"{'target':10} "
        + " ".join(f"{TARGETS[key]:11,}" for key in keys)
        + f" {TARGETS['p50_ms']:8.2f} {TARGETS['p99_ms']:8.2f}"
    )
    for other in ("kombu", "sqlite3"):
        if other in results:
            r = results[other]
            ratios = [kelp[key] / r[key] if key in r else nan for key in keys]
            print(f"kelp/{other:5} " + " ".join(f"{ratio:10.2f}x" for ratio in ratios))
            medians = [kelp[key + "_median"] / r[key + "_median"] if key in r else nan for key in keys]
            print(f"{'  medians':10} " + " ".join(f"{ratio:10.2f}x" for ratio in medians))
    if "sqlite3" in results:
        print(
            "(sqlite3's publish commits each message, its transient 100 per transaction; "
            f"target kelp/sqlite3 publish >= {PUBLISH_RATIO}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
