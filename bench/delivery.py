"""The delivery-model benchmark (issue #9): a plain ``Producer.publish`` loop with default options.

    eval "$(scripts/redis.sh start)"; eval "$(scripts/rabbitmq.sh start)"
    python bench/delivery.py [--messages N] [--confirm-messages N] [--repeats N]
                             [--transports amqp,redis,sqlite] [--amqp-url URL] [--redis-url URL] [--json]

What a user who switches from Kombu meets first: the loop they already have, unchanged options. Every row
publishes N messages (default 20,000) of a dict whose JSON encoding is 256 bytes, persistent, to a durable
queue through a direct exchange, each library on a fresh queue of the same broker, in one run:

- **kelp default** — ``Producer.publish`` N times, then ``Producer.flush()``: the time includes waiting
  for the broker to confirm every message (amqp), every reply (redis) or every commit (sqlite), so each
  message is known stored when the clock stops.
- **Kombu default** — Kombu's ``Producer.publish`` N times with its default transport options (py-amqp
  without confirms; Redis: a round trip per publish). The clock stops when the loop returns.
- **broker ceiling** (amqp) — the same messages encoded before the clock starts and published with
  ``publish_many`` in batches of 500, then ``flush()``: what RabbitMQ takes with confirms here, whatever the
  client. On a machine whose cores the broker shares, the default-loop target cannot exceed this row.
- **confirm per publish** (amqp) — kelp ``confirm_publish=True`` against Kombu's ``confirm_publish=True``:
  each publish returns once its own confirm arrived (``--confirm-messages``, default 2,000).
- **sqlite** — kelp persistent (each publish committed before it returns), kelp transient (group commit),
  and the floor: a plain ``sqlite3`` loop that INSERTs and commits each message in WAL mode
  (synchronous=NORMAL), on a file of its own.

Each row is the best of ``--repeats`` (default 3), median in brackets; ratios use the best runs. After each
run the queue is counted, so a row that lost messages fails instead of reporting a rate. Kombu is imported
here only; kelp never depends on it. The broker shares the machine's cores: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

# bench/ holds redis.py: running this script puts bench/ first on sys.path, where it would shadow redis-py.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]

BODY_SIZE = 256


def make_body(size: int = BODY_SIZE) -> dict[str, Any]:
    """A dict whose compact JSON encoding is exactly ``size`` bytes."""
    body: dict[str, Any] = {"id": 0, "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body, separators=(",", ":"))))
    return body


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def _count(library: Any, url: str, queue: str) -> int:
    with library.Connection(url) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


def _drop(library: Any, url: str, queue: str, exchange: str) -> None:
    with library.Connection(url) as conn:
        channel = conn.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)


def _expect(library: Any, url: str, queue: str, exchange: str, n: int, timeout: float = 60) -> None:
    """Fail unless the queue holds all ``n`` messages (counted by the library that published them)."""
    deadline = time.monotonic() + timeout
    while (count := _count(library, url, queue)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{library.__name__}: {count} of {n} messages are in the queue")
        time.sleep(0.05)
    _drop(library, url, queue, exchange)


def kelp_loop(url: str, n: int, options: dict[str, Any] | None = None, mode: str = "persistent") -> float:
    """kelp's plain loop; the clock stops when flush() has returned."""
    import kelp

    exchange, queue = unique("x"), unique("q")
    ex = kelp.Exchange(exchange, "direct", durable=True)
    q = kelp.Queue(queue, ex, routing_key=queue, durable=True)
    body = make_body()
    with kelp.Connection(url, transport_options=options or {}) as conn:
        q(conn.default_channel).declare()
        producer = conn.Producer(exchange=ex, routing_key=queue)
        start = time.perf_counter()
        for _ in range(n):
            producer.publish(body, delivery_mode=mode)
        producer.flush()
        elapsed = time.perf_counter() - start
    _expect(kelp, url, queue, exchange, n)
    return n / elapsed


def kombu_loop(kombu_url: str, n: int, options: dict[str, Any] | None = None) -> float:
    """Kombu's plain loop with its defaults; the clock stops when the last publish returned."""
    import kombu

    exchange, queue = unique("x"), unique("q")
    ex = kombu.Exchange(exchange, "direct", durable=True)
    q = kombu.Queue(queue, ex, routing_key=queue, durable=True)
    body = make_body()
    with kombu.Connection(kombu_url, transport_options=options or {}) as conn:
        q(conn.default_channel).declare()
        producer = conn.Producer(exchange=ex, routing_key=queue)
        start = time.perf_counter()
        for _ in range(n):
            producer.publish(body, delivery_mode=2)
        elapsed = time.perf_counter() - start
    _expect(kombu, kombu_url, queue, exchange, n)
    return n / elapsed


def sqlite3_floor(n: int) -> float:
    """A plain sqlite3 loop committing each message (WAL, synchronous=NORMAL): the floor for sqlite. Each
    message is encoded in the loop, as kelp's loop encodes each (and as bench/sqlite.py's floor does)."""
    message = make_body()
    with tempfile.TemporaryDirectory(prefix="kelp-bench-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, queue TEXT, body BLOB)")
        start = time.perf_counter()
        for _ in range(n):
            db.execute("BEGIN")
            db.execute("INSERT INTO m (queue, body) VALUES (?, ?)", ("q", json.dumps(message).encode()))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
    return n / elapsed


def broker_ceiling(url: str, n: int) -> float:
    """What RabbitMQ itself takes with confirms on this machine: the same persistent messages, encoded once
    before the clock starts and published in batches of 500 (one write each), then flush(). No client can
    publish confirmed messages faster through this broker; Kombu's default loop is not confirmed at all."""
    import kelp

    exchange, queue = unique("x"), unique("q")
    ex = kelp.Exchange(exchange, "direct", durable=True)
    q = kelp.Queue(queue, ex, routing_key=queue, durable=True)
    with kelp.Connection(url) as conn:
        q(conn.default_channel).declare()
        producer = conn.Producer(exchange=ex, routing_key=queue)
        batch = [producer.prepare(make_body()) for _ in range(500)]
        start = time.perf_counter()
        for _ in range(n // len(batch)):
            producer.publish_many(batch)
        producer.flush()
        elapsed = time.perf_counter() - start
    _expect(kelp, url, queue, exchange, n // len(batch) * len(batch))
    return n // len(batch) * len(batch) / elapsed


def best_of(repeats: int, run: Callable[[], float]) -> tuple[float, float]:
    rates = [run() for _ in range(repeats)]
    return max(rates), statistics.median(rates)


def bench_amqp(url: str, n: int, confirm_n: int, repeats: int) -> dict[str, tuple[float, float]]:
    kombu_url = url.replace("amqp://", "pyamqp://", 1)
    return {
        "kelp default": best_of(repeats, lambda: kelp_loop(url, n)),
        "Kombu default": best_of(repeats, lambda: kombu_loop(kombu_url, n)),
        "broker ceiling (confirmed)": best_of(repeats, lambda: broker_ceiling(url, n)),
        "kelp confirm_publish": best_of(
            repeats, lambda: kelp_loop(url, confirm_n, {"confirm_publish": True})
        ),
        "Kombu confirm_publish": best_of(
            repeats, lambda: kombu_loop(kombu_url, confirm_n, {"confirm_publish": True})
        ),
    }


def bench_redis(url: str, n: int, repeats: int) -> dict[str, tuple[float, float]]:
    return {
        "kelp default": best_of(repeats, lambda: kelp_loop(url, n)),
        "Kombu default": best_of(repeats, lambda: kombu_loop(url, n)),
    }


def bench_sqlite(n: int, repeats: int) -> dict[str, tuple[float, float]]:
    def kelp_file(mode: str) -> float:
        with tempfile.TemporaryDirectory(prefix="kelp-bench-") as tmp:
            return kelp_loop(f"sqlite:///{tmp}/kelp.db", n, mode=mode)

    return {
        "kelp default (persistent)": best_of(repeats, lambda: kelp_file("persistent")),
        "kelp transient": best_of(repeats, lambda: kelp_file("transient")),
        "sqlite3 commit each (floor)": best_of(repeats, lambda: sqlite3_floor(n)),
    }


RATIOS: dict[str, list[tuple[str, str, str, float | None]]] = {
    "amqp": [
        ("kelp default / Kombu default", "kelp default", "Kombu default", 2.0),
        ("broker ceiling / Kombu default", "broker ceiling (confirmed)", "Kombu default", None),
        ("kelp default / broker ceiling", "kelp default", "broker ceiling (confirmed)", None),
        ("kelp / Kombu, confirm per publish", "kelp confirm_publish", "Kombu confirm_publish", 1.0),
    ],
    "redis": [("kelp default / Kombu default", "kelp default", "Kombu default", 10.0)],
    "sqlite": [
        ("kelp persistent / sqlite3 floor", "kelp default (persistent)", "sqlite3 commit each (floor)", 0.7),
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--confirm-messages", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", default="amqp,redis,sqlite")
    parser.add_argument("--amqp-url", default=os.environ.get("KELP_TEST_AMQP_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("KELP_TEST_REDIS_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    results: dict[str, dict[str, tuple[float, float]]] = {}
    for transport in args.transports.split(","):
        print(f"== {transport}", file=sys.stderr)
        if transport == "amqp":
            if not args.amqp_url:
                parser.error("amqp needs --amqp-url or KELP_TEST_AMQP_URL")
            results["amqp"] = bench_amqp(args.amqp_url, args.messages, args.confirm_messages, args.repeats)
        elif transport == "redis":
            if not args.redis_url:
                parser.error("redis needs --redis-url or KELP_TEST_REDIS_URL")
            results["redis"] = bench_redis(args.redis_url, args.messages, args.repeats)
        elif transport == "sqlite":
            results["sqlite"] = bench_sqlite(args.messages, args.repeats)
        else:
            parser.error(f"unknown transport {transport!r}")

    ratios = {
        transport: {
            label: (rows[top][0] / rows[bottom][0], target)
            for label, top, bottom, target in RATIOS[transport]
        }
        for transport, rows in results.items()
    }
    if args.json:
        print(json.dumps({"results": results, "ratios": ratios}, indent=2))
        return 0
    print(f"{args.messages:,} 256-byte JSON messages per row; msg/s, best of {args.repeats} (median)")
    for transport, rows in results.items():
        print(f"\n{transport}")
        for label, (best, median) in rows.items():
            print(f"  {label:<30} {best:>10,.0f} ({median:,.0f})")
        if transport == "sqlite":
            best = rows["kelp default (persistent)"][0]
            print(f"  {'target: persistent >= 20,000 msg/s':<30} {'met' if best >= 20_000 else 'MISSED'}")
            best = rows["kelp transient"][0]
            print(f"  {'target: transient >= 60,000 msg/s':<30} {'met' if best >= 60_000 else 'MISSED'}")
        for label, (ratio, target) in ratios[transport].items():
            if target is None:
                print(f"  ratio {label}: {ratio:.2f}x")
                continue
            verdict = "met" if ratio >= target else "MISSED"
            print(f"  ratio {label}: {ratio:.2f}x (target >= {target}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
