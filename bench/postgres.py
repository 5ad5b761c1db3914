"""PostgreSQL benchmark: kelp ``postgresql://`` vs Kombu ``sqla+postgresql+psycopg://`` vs a plain psycopg
loop (the floor), in one run against one server (``KELP_TEST_POSTGRES_URL``, scripts/postgres.sh start).

1. **publish** - one process, a plain ``Producer.publish`` loop of persistent ~256-byte JSON messages,
   timed until the last is committed (kelp: pipelined, one commit per publish, then ``flush()``; by
   default without waiting for the WAL flush, see ``synchronous_commit`` in docs/transports.md, and again
   with ``?synchronous_commit=on``; Kombu commits with the server's default, a flush each).
   Floor: one INSERT committed each, waited for, ``synchronous_commit`` off as kelp's default.
2. **consume+ack** - one process, a Consumer (prefetch 100) acking every message. Floor: claim 100 rows
   with ``FOR UPDATE SKIP LOCKED`` and delete them, per transaction.
3. **2x2** (kelp) - 2 producer and 2 consumer processes, N messages in all, start to last ack.
4. **latency** (kelp, Kombu) - a producer process sends a message every 5 ms with its send time; a
   consumer process records arrival - send: p50 and p99.
5. **long transaction** (kelp) - a producer and a consumer process stream while another session holds a
   transaction open (``--long-tx`` seconds, default 60): the ack rate in the first and the last tenth
   shows whether the dead rows VACUUM may not remove meanwhile slow it down.

    python bench/postgres.py [--messages N] [--kombu-messages N] [--long-tx SECONDS] [--rates-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

BODY = {"id": "5f0c6f0e-3b1a-4f43-9d0e-6a4c1d2b7e90", "type": "order.created", "note": "x" * 170}
TARGET_RATIO = 20.0  # kelp / Kombu, publish and consume+ack


def _kelp_url(base: str, schema: str) -> str:
    return f"{base}?schema={schema}"


def _kombu_url(base: str) -> str:
    return "sqla+" + base.replace("postgresql://", "postgresql+psycopg://", 1)


def _connection(library: str, url: str) -> Any:
    if library == "kelp":
        import kelp

        return kelp.Connection(url)
    import kombu

    conn = kombu.Connection(url)
    conn.transport.polling_interval = 0  # its transport options go to SQLAlchemy's create_engine
    return conn


def _entities(library: str, name: str) -> tuple[Any, Any]:
    module = __import__(library)
    exchange = module.Exchange(name, "direct", durable=True)
    return exchange, module.Queue(name, exchange, name, durable=True)


def child_publish(library: str, url: str, name: str, n: int) -> float:
    exchange, queue = _entities(library, name)
    with _connection(library, url) as conn:
        producer = conn.Producer()
        producer.publish(BODY, exchange=exchange, routing_key=name, declare=[queue])
        start = time.perf_counter()
        for _ in range(n - 1):
            producer.publish(BODY, exchange=exchange, routing_key=name)
        if library == "kelp":
            conn.flush()  # every publish confirmed (committed) before the clock stops
        return time.perf_counter() - start


def child_consume(library: str, url: str, name: str, n: int) -> float:
    _, queue = _entities(library, name)
    got = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal got
        got += 1
        message.ack()

    with _connection(library, url) as conn, conn.Consumer(queue, callbacks=[on_message], prefetch_count=100):
        start = time.perf_counter()
        while got < n:
            conn.drain_events(timeout=30)
        return time.perf_counter() - start


def child_latency_send(library: str, url: str, name: str, n: int) -> float:
    exchange, queue = _entities(library, name)
    with _connection(library, url) as conn:
        producer = conn.Producer()
        for _ in range(n):
            producer.publish({"t": time.time()}, exchange=exchange, routing_key=name, declare=[queue])
            time.sleep(0.005)
    return 0.0


def child_latency_receive(library: str, url: str, name: str, n: int) -> list[float]:
    _, queue = _entities(library, name)
    delays: list[float] = []

    def on_message(body: Any, message: Any) -> None:
        delays.append((time.time() - body["t"]) * 1000)
        message.ack()

    with _connection(library, url) as conn, conn.Consumer(queue, callbacks=[on_message]):
        print("ready", flush=True)
        while len(delays) < n:
            conn.drain_events(timeout=30)
    return delays


def _run(job: str, *args: Any) -> subprocess.Popen[str]:
    code = f"import json, sys; sys.argv[1:] = []; import bench_pg as b; print(json.dumps(b.{job}(*{args!r})))"
    env = {**os.environ, "PYTHONPATH": _HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", code.replace("bench_pg", "postgres")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=_HERE,
    )


def _result(process: subprocess.Popen[str]) -> Any:
    out, _ = process.communicate(timeout=600)
    if process.returncode:
        raise RuntimeError(f"a benchmark child failed ({process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def _floor(base: str, n: int) -> tuple[float, float]:
    import psycopg

    with psycopg.connect(base, autocommit=True) as db:
        db.execute("SET synchronous_commit = off")  # as kelp's default (committed, not flushed)
        db.execute(
            "DROP TABLE IF EXISTS bench_floor; CREATE TABLE bench_floor (id bigint GENERATED ALWAYS AS "
            "IDENTITY PRIMARY KEY, queue text, body bytea, owner bigint)"
        )
        body = json.dumps(BODY).encode()
        start = time.perf_counter()
        for _ in range(n):
            db.execute("INSERT INTO bench_floor (queue, body) VALUES ('q', %s)", (body,))
        publish = n / (time.perf_counter() - start)
        start = time.perf_counter()
        taken = 0
        while taken < n:
            with db.transaction():
                rows = db.execute(
                    "DELETE FROM bench_floor WHERE id IN (SELECT id FROM bench_floor WHERE queue = 'q' "
                    "ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING body"
                ).fetchall()
            taken += len(rows)
        consume = n / (time.perf_counter() - start)
        db.execute("DROP TABLE bench_floor")
    return publish, consume


def _rates(library: str, url: str, n: int) -> tuple[float, float]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    publish = n / _result(_run("child_publish", library, url, name, n))
    consume = n / _result(_run("child_consume", library, url, name, n))
    return publish, consume


def _latency(library: str, url: str, n: int) -> tuple[float, float]:
    name = f"lat_{uuid.uuid4().hex[:8]}"
    _result(_run("child_publish", library, url, name, 1))  # declares the queue
    _result(_run("child_consume", library, url, name, 1))
    receiver = _run("child_latency_receive", library, url, name, n)
    assert receiver.stdout is not None
    receiver.stdout.readline()
    _result(_run("child_latency_send", library, url, name, n))
    delays = sorted(_result(receiver))
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1]


def child_drain(url: str, name: str, idle: float) -> tuple[int, float]:
    """Consume until ``idle`` seconds pass without a message (after the first); (acked, time of the last)."""
    _, queue = _entities("kelp", name)
    got, last = 0, 0.0

    def on_message(body: Any, message: Any) -> None:
        nonlocal got, last
        message.ack()
        got, last = got + 1, time.time()

    with _connection("kelp", url) as conn, conn.Consumer(queue, callbacks=[on_message], prefetch_count=100):
        print("ready", flush=True)
        while True:
            try:
                conn.drain_events(timeout=idle if got else 30)
            except TimeoutError:
                return got, last


def _two_by_two(url: str, n: int) -> float:
    """2 producer and 2 consumer processes, n messages in all: start to the last ack."""
    name = f"e2e_{uuid.uuid4().hex[:8]}"
    _result(_run("child_publish", "kelp", url, name, 1))
    _result(_run("child_consume", "kelp", url, name, 1))
    consumers = [_run("child_drain", url, name, 2.0) for _ in range(2)]
    for consumer in consumers:
        assert consumer.stdout is not None
        consumer.stdout.readline()
    start = time.time()
    for producer in [_run("child_publish", "kelp", url, name, n // 2) for _ in range(2)]:
        _result(producer)
    counts = [_result(consumer) for consumer in consumers]
    if sum(got for got, _ in counts) != n // 2 * 2:
        raise RuntimeError(f"2x2: {sum(got for got, _ in counts)} of {n // 2 * 2} messages arrived")
    return n / (max(last for _, last in counts) - start)


def child_stream_publish(url: str, name: str, seconds: float) -> int:
    exchange, queue = _entities("kelp", name)
    sent = 0
    with _connection("kelp", url) as conn:
        producer = conn.Producer()
        producer.publish(BODY, exchange=exchange, routing_key=name, declare=[queue])
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            producer.publish(BODY, exchange=exchange, routing_key=name)
            sent += 1
    return sent


def child_stream_consume(url: str, name: str, seconds: float) -> list[int]:
    """Messages acked in each second of the run."""
    _, queue = _entities("kelp", name)
    start = time.monotonic()
    per_second = [0] * (int(seconds) + 1)

    def on_message(body: Any, message: Any) -> None:
        message.ack()
        per_second[min(int(time.monotonic() - start), len(per_second) - 1)] += 1

    with _connection("kelp", url) as conn, conn.Consumer(queue, callbacks=[on_message], prefetch_count=100):
        while time.monotonic() - start < seconds:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    return per_second[: int(seconds)]


def _long_transaction(base: str, url: str, seconds: float) -> tuple[float, float, int]:
    """A producer and a consumer process streaming for ``seconds`` beside an open transaction: the
    consume rate in the first and the last tenth of the run, and the messages acked in all."""
    import psycopg

    name = f"ltx_{uuid.uuid4().hex[:8]}"
    _result(_run("child_publish", "kelp", url, name, 1))
    with psycopg.connect(base) as holder:
        holder.execute("SELECT txid_current()")  # an xid: VACUUM may remove nothing newer until it ends
        consumer = _run("child_stream_consume", url, name, seconds)
        producer = _run("child_stream_publish", url, name, seconds)
        _result(producer)
        per_second = _result(consumer)
        holder.rollback()
    tenth = max(1, len(per_second) // 10)
    return statistics.mean(per_second[1 : tenth + 1]), statistics.mean(per_second[-tenth:]), sum(per_second)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("KELP_TEST_POSTGRES_URL"))
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--kombu-messages", type=int, default=1_000)
    parser.add_argument("--latency-messages", type=int, default=400)
    parser.add_argument("--long-tx", type=float, default=60.0)
    parser.add_argument("--rates-only", action="store_true", help="publish and consume+ack only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.url:
        parser.error("no server: pass --url or set KELP_TEST_POSTGRES_URL (scripts/postgres.sh start)")
    base = args.url
    kelp_url = _kelp_url(base, f"bench_{uuid.uuid4().hex[:8]}")
    results: dict[str, Any] = {}
    results["floor_publish"], results["floor_consume"] = _floor(base, args.messages)
    results["kelp_publish"], results["kelp_consume"] = _rates("kelp", kelp_url, args.messages)
    results["kelp_sync_publish"], results["kelp_sync_consume"] = _rates(
        "kelp", f"{kelp_url}&synchronous_commit=on", args.messages
    )
    results["kombu_publish"], results["kombu_consume"] = _rates(
        "kombu", _kombu_url(base), args.kombu_messages
    )
    if not args.rates_only:
        results["kelp_2x2"] = _two_by_two(kelp_url, args.messages)
        results["kelp_p50_ms"], results["kelp_p99_ms"] = _latency("kelp", kelp_url, args.latency_messages)
        results["kombu_p50_ms"], results["kombu_p99_ms"] = _latency(
            "kombu", _kombu_url(base), args.latency_messages // 4
        )
    if args.long_tx > 0 and not args.rates_only:
        first, last, rounds = _long_transaction(base, kelp_url, args.long_tx)
        results.update(long_tx_first=first, long_tx_last=last, long_tx_total=rounds)
    for kind in ("publish", "consume"):
        results[f"ratio_kombu_{kind}"] = results[f"kelp_{kind}"] / results[f"kombu_{kind}"]
        results[f"ratio_floor_{kind}"] = results[f"kelp_{kind}"] / results[f"floor_{kind}"]
        results[f"ratio_kombu_sync_{kind}"] = results[f"kelp_sync_{kind}"] / results[f"kombu_{kind}"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'':14}{'kelp':>10}{'kombu':>10}{'floor':>10}{'x kombu':>10}{'/ floor':>10}")
    for kind in ("publish", "consume"):
        print(
            f"{kind + ' /s':14}{results[f'kelp_{kind}']:>10.0f}{results[f'kombu_{kind}']:>10.0f}"
            f"{results[f'floor_{kind}']:>10.0f}{results[f'ratio_kombu_{kind}']:>10.1f}"
            f"{results[f'ratio_floor_{kind}']:>10.2f}"
        )
    for kind in ("publish", "consume"):
        print(
            f"{kind + ' /s':14}{results[f'kelp_sync_{kind}']:>10.0f}{'':>20}"
            f"{results[f'ratio_kombu_sync_{kind}']:>10.1f}   (kelp ?synchronous_commit=on)"
        )
    if not args.rates_only:
        print(f"2x2 end-to-end /s (kelp): {results['kelp_2x2']:.0f}")
        print(
            f"latency ms p50/p99: kelp {results['kelp_p50_ms']:.2f}/{results['kelp_p99_ms']:.2f}, "
            f"kombu {results['kombu_p50_ms']:.2f}/{results['kombu_p99_ms']:.2f}"
        )
    if "long_tx_total" in results:
        print(
            f"1 producer + 1 consumer beside a transaction open {args.long_tx:g} s: "
            f"{results['long_tx_first']:.0f} msg/s acked in the first tenth, "
            f"{results['long_tx_last']:.0f} in the last ({results['long_tx_total']} in all)"
        )
    for kind in ("publish", "consume"):
        verdict = "meets" if results[f"ratio_kombu_{kind}"] >= TARGET_RATIO else "MISSES"
        print(f"{kind}: {verdict} the {TARGET_RATIO:g}x Kombu target")


if __name__ == "__main__":
    main()
