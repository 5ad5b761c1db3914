"""Scale benchmark: does a broker with 10,000 queues and topic bindings cost what one with 10 costs?

For each transport (memory, sqlite, redis) and each size (``--small`` and ``--large`` queues, default 10 and
10,000), a fresh broker gets one topic exchange and that many queues, each bound to it with its own pattern
(``r<i>.*.created`` or ``*.r<i>.#``). Then, on that broker:

* **declare** — declaring one more queue and binding it (``queue_declare`` + ``queue_bind``), ``--samples``
  times: p50/p99 latency;
* **publish** — ``Producer.publish`` with ``confirm_publish`` (it returns once the broker stored the message)
  to the topic exchange, ``--messages`` times, each with a routing key that reaches one of ten queues (the
  same ten at both sizes, so storing costs the same) and a fresh middle word (so no per-key memo answers
  for the router: every publish walks the bindings' index): p50/p99 latency;
* **redis server blocking** — during that publish loop a second process PINGs the server in a loop (p50/p99
  of its round trips), and the server's own accounting: microseconds per script call (``INFO
  commandstats``) and how many commands ran longer than 1 ms (``SLOWLOG``).

Figures for both sizes are printed with their ratio (large / small): flat cost is a ratio near 1.

    python bench/scale.py [--small 10] [--large 10000] [--samples 200] [--messages 1000]
                          [--transports memory,sqlite,redis] [--json]

redis runs against a private ``redis-server`` started here (needs it on PATH; skipped otherwise). The
default run takes about two minutes, most of it declaring the 10,000 queues.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# This directory holds redis.py: drop it from sys.path so that ``import redis`` finds redis-py.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

EXCHANGE = "scale"
TRANSPORTS = ("memory", "sqlite", "redis")

PINGER = """
import sys, time, redis
client = redis.Redis.from_url(sys.argv[1])
client.ping()
print("ready", flush=True)
times = []
import select
while not select.select([sys.stdin], [], [], 0)[0]:
    start = time.perf_counter()
    client.ping()
    times.append(time.perf_counter() - start)
    time.sleep(0.0005)
print(" ".join(f"{t:.6f}" for t in times), flush=True)
"""


def pattern(i: int) -> str:
    return f"r{i}.*.created" if i % 2 else f"*.r{i}.#"


def routing_key(i: int, word: str) -> str:
    """A key that reaches queue ``i`` (and no other one)."""
    return f"r{i}.{word}.created" if i % 2 else f"{word}.r{i}.x"


def percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
    }


def run(url: str, size: int, samples: int, messages: int, server: Any | None) -> dict[str, Any]:
    """Build a broker of ``size`` queues at ``url`` and measure it (``server``: a redis-py client)."""
    import kelp

    result: dict[str, Any] = {"queues": size}
    with kelp.Connection(url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.default_channel
        channel.exchange_declare(EXCHANGE, "topic", durable=False)
        start = time.perf_counter()
        for i in range(size):
            channel.queue_declare(f"q{i}", durable=False)
            channel.queue_bind(f"q{i}", EXCHANGE, pattern(i))
        result["setup_s"] = time.perf_counter() - start
        declares = []
        for n in range(samples):
            name = f"extra{n}"
            start = time.perf_counter()
            channel.queue_declare(name, durable=False)
            channel.queue_bind(name, EXCHANGE, f"extra{n}.#")
            declares.append(time.perf_counter() - start)
        result["declare"] = percentiles(declares)
        rng = random.Random(size)
        keys = [routing_key(rng.randrange(min(size, 10)), uuid.uuid4().hex[:8]) for _ in range(messages)]
        producer = conn.Producer(exchange=kelp.Exchange(EXCHANGE, "topic", durable=False))
        producer.publish(b"warm", routing_key=keys[0])
        stats_before = server.info("commandstats") if server is not None else None
        if server is not None:
            server.config_set("slowlog-log-slower-than", 1000)
            server.slowlog_reset()
        pinger = _start_pinger(url.split("?")[0]) if server is not None else None
        publishes = []
        for key in keys:
            start = time.perf_counter()
            producer.publish(b"x", routing_key=key)
            publishes.append(time.perf_counter() - start)
        result["publish"] = percentiles(publishes)
        if server is not None and pinger is not None:
            result["ping"] = percentiles(_stop_pinger(pinger))
            result["script_us_per_call"] = _script_us(stats_before, server.info("commandstats"))
            result["slow_commands_over_1ms"] = server.slowlog_len()
            visits = _trie_nodes(conn, keys[-1])
            if visits is not None:
                result["trie_nodes_read"] = visits
    return result


def _start_pinger(url: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", PINGER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    process.stdout.readline()  # "ready"
    return process


def _stop_pinger(process: subprocess.Popen[str]) -> list[float]:
    assert process.stdin is not None
    process.stdin.write("stop\n")
    process.stdin.flush()
    out, _ = process.communicate(timeout=30)
    return [float(t) for t in out.split()] or [0.0]


def _script_us(before: dict[str, Any], after: dict[str, Any]) -> float:
    def totals(stats: dict[str, Any]) -> tuple[int, int]:
        entry = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(entry["calls"]), int(entry["usec"])

    calls = totals(after)[0] - totals(before)[0]
    usec = totals(after)[1] - totals(before)[1]
    return usec / calls if calls else 0.0


def _trie_nodes(conn: Any, key: str) -> int | None:
    """How many trie nodes the script reads to route ``key`` (None for a kelp without the trie)."""
    import redis

    from kelp._broker.redis.script import SHA

    transport = conn.transport
    prefix = "{" + transport.prefix + "}:"
    try:
        _reached, visits = transport._client.execute_command(
            "EVALSHA", SHA, 1, prefix, "routecost", EXCHANGE, key, ""
        )
    except redis.ResponseError:
        return None
    return int(visits)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log")),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def measure(transport: str, sizes: list[int], samples: int, messages: int, log: Callable[[str], None]) -> Any:
    results = []
    with tempfile.TemporaryDirectory(prefix="kelp-scale-") as tmp:
        directory = Path(tmp)
        server_process = None
        client = None
        if transport == "redis":
            if shutil.which("redis-server") is None:
                log("redis: skipped (redis-server is not on PATH)")
                return None
            import redis

            server_process, base = start_redis(directory)
            client = redis.Redis.from_url(base, decode_responses=True)
        try:
            for size in sizes:
                if transport == "memory":
                    url = f"memory://scale{size}-{uuid.uuid4().hex[:6]}"
                elif transport == "sqlite":
                    url = f"sqlite:///{directory / f'scale{size}.db'}"
                else:
                    url = f"{base}?prefix=scale{size}"
                log(f"{transport}: {size} queues ...")
                results.append(run(url, size, samples, messages, client))
        finally:
            if client is not None:
                client.close()
            if server_process is not None:
                server_process.terminate()
                server_process.wait(timeout=10)
    return results


ROWS = (
    ("declare p50 (ms)", ("declare", "p50_ms")),
    ("declare p99 (ms)", ("declare", "p99_ms")),
    ("publish p50 (ms)", ("publish", "p50_ms")),
    ("publish p99 (ms)", ("publish", "p99_ms")),
    ("PING p50 during publishes (ms)", ("ping", "p50_ms")),
    ("PING p99 during publishes (ms)", ("ping", "p99_ms")),
    ("script time per call (us)", ("script_us_per_call",)),
    ("commands over 1 ms (SLOWLOG)", ("slow_commands_over_1ms",)),
    ("topic trie nodes read per publish", ("trie_nodes_read",)),
    ("setup of all queues (s)", ("setup_s",)),
)


def _get(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value)


def table(report: dict[str, Any]) -> str:
    lines = []
    for transport, results in report.items():
        if not results:
            continue
        small, large = results[0], results[-1]
        lines.append(f"\n{transport}: {small['queues']} vs {large['queues']} queues and topic bindings")
        lines.append(f"  {'':36}{small['queues']:>12}{large['queues']:>12}{'ratio':>10}")
        for label, path in ROWS:
            a, b = _get(small, path), _get(large, path)
            if a is None or b is None:
                continue
            ratio = f"{b / a:.2f}" if a else "-"
            lines.append(f"  {label:36}{a:12.3f}{b:12.3f}{ratio:>10}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200, help="declarations measured per broker")
    parser.add_argument("--messages", type=int, default=1000, help="publishes measured per broker")
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    quiet = args.json

    def log(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    report: dict[str, Any] = {}
    for transport in args.transports.split(","):
        if transport not in TRANSPORTS:
            raise SystemExit(f"unknown transport {transport!r}; expected some of {', '.join(TRANSPORTS)}")
        report[transport] = measure(transport, [args.small, args.large], args.samples, args.messages, log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
