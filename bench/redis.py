"""Redis benchmark: kelp, kelp.aio, Kombu's Redis transport and raw redis-py (the floor), in one run.

One private ``redis-server`` (loopback, free port, temporary directory, AOF ``appendfsync everysec`` unless
``--fsync always|no``) serves every run; each run uses its own key prefix / queue and runs in a fresh
subprocess, libraries interleaved, best of ``--repeats``.

Scenario (as in ``bench/memory.py``): N messages, a ~256-byte JSON dict, persistent, one durable queue bound
to a direct exchange.

* **publish** — ``Producer.publish(body, routing_key=..., declare=[queue])`` N times, timed until the broker
  holds them all (kelp: ``flush()`` after the loop, which returns once every publish is confirmed). With
  kelp's defaults each persistent publish is written to the socket before it returns and confirmed later,
  pipelined (``kelp``, ``kelp.aio``); ``kelp-confirm`` runs with ``confirm_publish=true`` (one round trip
  each, as Kombu). For kelp also ``publish_many`` of 100 prepared messages at a time (``kelp-batch``).
* **consume+ack** — a ``Consumer`` (prefetch 100) whose callback acks each message, driven by
  ``drain_events`` until all N arrived.
* **raw redis-py** — what the server allows a client that does no routing and keeps no AMQP semantics:
  XADD N times (one round trip each) and in pipelines of 100; XREADGROUP COUNT 100 + one XACK/XDEL
  pipeline per batch.

    python bench/redis.py [--messages N] [--repeats R] [--fsync everysec|always|no] [--json]

Kombu is imported only here, to compare against; kelp never depends on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# This file is named redis.py: running it puts bench/ first on sys.path, where it would shadow the redis
# package that kelp, Kombu and the floor import. Drop that entry before any of them is imported.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

BODY_SIZE = 256
PREFETCH = 100
BATCH = 100
DRAIN_TIMEOUT = 10.0
RUNS = (
    "kelp",
    "kelp-confirm",
    "kelp-batch",
    "kelp.aio",
    "kelp.aio-confirm",
    "kelp.aio-batch",
    "kombu",
    "redis-py",
)


def make_body(size: int = BODY_SIZE) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "5f0c6f0e-3b1a-4f43-9d0e-6a4c1d2b7e90",
        "type": "order.created",
        "ts": 1718000000.125,
        "customer": {"id": 48213, "tier": "gold"},
        "items": [{"sku": "KLP-001", "qty": 2}, {"sku": "KLP-017", "qty": 1}],
        "note": "",
    }
    body["note"] = "x" * max(0, size - len(json.dumps(body)))
    return body


# --- the runs (each in its own subprocess) ---------------------------------------------------------------


def run_kelp(url: str, messages: int, batch: bool, confirm: bool) -> tuple[float, float]:
    import kelp

    body = make_body()
    suffix = uuid.uuid4().hex[:8]
    exchange = kelp.Exchange(f"bench.x.{suffix}", "direct")
    queue = kelp.Queue(f"bench.q.{suffix}", exchange, routing_key="k")
    count = [0]

    def on_message(payload: Any, message: Any) -> None:
        count[0] += 1
        message.ack()

    with kelp.Connection(f"{url}?prefix=bench{suffix}{'&confirm_publish=true' if confirm else ''}") as conn:
        producer = kelp.Producer(conn, exchange=exchange)
        producer.publish(body, routing_key="k", declare=[queue])  # declarations, outside the timing
        start = time.perf_counter()
        if batch:
            for _ in range(0, messages - 1, BATCH):
                producer.publish_many([producer.prepare(body, routing_key="k") for _ in range(BATCH)])
        else:
            for _ in range(messages - 1):
                producer.publish(body, routing_key="k", declare=[queue])
        conn.flush()  # every publish confirmed
        total = conn.default_channel.queue_declare(queue.name, passive=True).message_count
        publish = time.perf_counter() - start
        consumer = kelp.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        start = time.perf_counter()
        consumer.consume()
        while count[0] < total:
            conn.drain_events(timeout=DRAIN_TIMEOUT)
        consume = time.perf_counter() - start
        consumer.cancel()
    return publish, consume


async def _run_kelp_aio(url: str, messages: int, batch: bool, confirm: bool) -> tuple[float, float]:
    import kelp.aio

    body = make_body()
    suffix = uuid.uuid4().hex[:8]
    exchange = kelp.aio.Exchange(f"bench.x.{suffix}", "direct")
    queue = kelp.aio.Queue(f"bench.q.{suffix}", exchange, routing_key="k")
    count = [0]

    async def on_message(payload: Any, message: Any) -> None:
        count[0] += 1
        await message.ack()

    async with kelp.aio.Connection(
        f"{url}?prefix=bench{suffix}{'&confirm_publish=true' if confirm else ''}"
    ) as conn:
        producer = kelp.aio.Producer(conn, exchange=exchange)
        await producer.publish(body, routing_key="k", declare=[queue])
        start = time.perf_counter()
        if batch:
            for _ in range(0, messages - 1, BATCH):
                await producer.publish_many([producer.prepare(body, routing_key="k") for _ in range(BATCH)])
        else:
            for _ in range(messages - 1):
                await producer.publish(body, routing_key="k", declare=[queue])
        await conn.flush()  # every publish confirmed
        total = (await conn.default_channel.queue_declare(queue.name, passive=True)).message_count
        publish = time.perf_counter() - start
        consumer = kelp.aio.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        start = time.perf_counter()
        await consumer.consume()
        while count[0] < total:
            await conn.drain_events(timeout=DRAIN_TIMEOUT)
        consume = time.perf_counter() - start
        await consumer.cancel()
    return publish, consume


def run_kombu(url: str, messages: int) -> tuple[float, float]:
    import kombu

    body = make_body()
    suffix = uuid.uuid4().hex[:8]
    exchange = kombu.Exchange(f"bench.x.{suffix}", "direct")
    queue = kombu.Queue(f"bench.q.{suffix}", exchange, routing_key="k")
    count = [0]

    def on_message(payload: Any, message: Any) -> None:
        count[0] += 1
        message.ack()

    with kombu.Connection(url, transport_options={"polling_interval": 0}) as conn:
        producer = kombu.Producer(conn, exchange=exchange)
        producer.publish(body, routing_key="k", declare=[queue], delivery_mode=2)
        start = time.perf_counter()
        for _ in range(messages - 1):
            producer.publish(body, routing_key="k", declare=[queue], delivery_mode=2)
        publish = time.perf_counter() - start
        consumer = kombu.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        start = time.perf_counter()
        consumer.consume()
        while count[0] < messages:
            conn.drain_events(timeout=DRAIN_TIMEOUT)
        consume = time.perf_counter() - start
        consumer.cancel()
    return publish, consume


def run_redis_py(url: str, messages: int) -> tuple[float, float, float]:
    import redis

    payload = json.dumps(make_body()).encode()
    client = redis.Redis.from_url(url)
    stream = f"bench.s.{uuid.uuid4().hex[:8]}"
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    start = time.perf_counter()
    for _ in range(messages):
        client.xadd(stream, {"b": payload})
    single = time.perf_counter() - start
    client.delete(stream)
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    start = time.perf_counter()
    for _ in range(0, messages, BATCH):
        pipe = client.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.xadd(stream, {"b": payload})
        pipe.execute()
    pipelined = time.perf_counter() - start
    start = time.perf_counter()
    received = 0
    while received < messages:
        batch = client.xreadgroup("g", "c", {stream: ">"}, count=PREFETCH, block=1000)
        ids = [entry_id for _, entries in batch for entry_id, _ in entries]
        for _, entries in batch:
            for _, fields in entries:
                json.loads(fields[b"b"])
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, "g", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
        received += len(ids)
    consume = time.perf_counter() - start
    client.delete(stream)
    client.close()
    return single, pipelined, consume


def child(run: str, url: str, messages: int) -> dict[str, float]:
    if run in ("kelp", "kelp-confirm", "kelp-batch"):
        publish, consume = run_kelp(url, messages, run == "kelp-batch", run == "kelp-confirm")
    elif run in ("kelp.aio", "kelp.aio-confirm", "kelp.aio-batch"):
        aio = _run_kelp_aio(url, messages, run == "kelp.aio-batch", run == "kelp.aio-confirm")
        publish, consume = asyncio.run(aio)
    elif run == "kombu":
        publish, consume = run_kombu(url, messages)
    else:
        single, pipelined, consume = run_redis_py(url, messages)
        return {
            "publish": messages / single,
            "publish-pipelined": messages / pipelined,
            "consume": messages / consume,
        }
    return {"publish": messages / publish, "consume": messages / consume}


# --- the server and the table ------------------------------------------------------------------------


def start_server(directory: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("bench/redis.py needs redis-server on PATH (scripts/redis.sh start installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    persistence = ["--appendonly", "no"] if fsync == "no" else ["--appendonly", "yes", "--appendfsync", fsync]
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            *persistence,
            "--logfile",
            str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fsync", choices=("everysec", "always", "no"), default="everysec")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("RUN", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.messages)))
        return 0

    runs = [run for run in args.runs.split(",") if run]
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kelp-bench-redis-") as directory:
        process, url = start_server(Path(directory), args.fsync)
        try:
            for repeat in range(args.repeats):
                order = runs[repeat % len(runs) :] + runs[: repeat % len(runs)]
                for run in order:
                    print(f"[{repeat + 1}/{args.repeats}] {run} ...", file=sys.stderr, flush=True)
                    out = subprocess.run(
                        [sys.executable, __file__, "--messages", str(args.messages), "--child", run, url],
                        capture_output=True,
                        text=True,
                        check=False,
                        env={**os.environ},
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"{run} failed:\n{out.stderr}")
                    figures = json.loads(out.stdout)
                    current = best.setdefault(run, figures)
                    for key, value in figures.items():
                        current[key] = max(current[key], value)
        finally:
            process.terminate()
            process.wait(timeout=10)

    if args.json:
        print(json.dumps({"messages": args.messages, "fsync": args.fsync, "best_msg_per_s": best}, indent=2))
        return 0
    print(f"\n{args.messages} messages, best of {args.repeats}, redis-server AOF fsync={args.fsync}\n")
    print(f"{'run':<16}{'publish msg/s':>16}{'consume+ack msg/s':>20}")
    for run in runs:
        figures = best[run]
        print(f"{run:<16}{figures['publish']:>16,.0f}{figures['consume']:>20,.0f}")
    if "redis-py" in best:
        print(f"{'redis-py pipe':<16}{best['redis-py']['publish-pipelined']:>16,.0f}{'':>20}")
    print()

    def ratio(a: str, b: str, key: str) -> str:
        if a in best and b in best:
            return f"{best[a][key] / best[b][key]:.2f}x"
        return "-"

    rows = [
        ("kelp / kombu", "kelp", "kombu"),
        ("kelp confirm / kombu", "kelp-confirm", "kombu"),
        ("kelp batch / kombu", "kelp-batch", "kombu"),
        ("kelp.aio / kombu", "kelp.aio", "kombu"),
        ("kelp.aio confirm / kombu", "kelp.aio-confirm", "kombu"),
        ("kelp.aio / kelp", "kelp.aio", "kelp"),
        ("kelp.aio confirm / kelp confirm", "kelp.aio-confirm", "kelp-confirm"),
        ("kelp.aio batch / kelp batch", "kelp.aio-batch", "kelp-batch"),
        ("kelp / redis-py", "kelp", "redis-py"),
    ]
    print(f"{'ratio':<30}{'publish':>10}{'consume+ack':>14}")
    for label, a, b in rows:
        print(f"{label:<30}{ratio(a, b, 'publish'):>10}{ratio(a, b, 'consume'):>14}")
    if "kelp-batch" in best and "redis-py" in best:
        floor = best["kelp-batch"]["publish"] / best["redis-py"]["publish-pipelined"]
        print(f"{'kelp batch / redis-py pipe':<30}{floor:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
