"""Celery on kelp against Celery on Kombu's own transports: no-op tasks through one real worker.

    eval "$(scripts/redis.sh start)"; eval "$(scripts/rabbitmq.sh start)"
    python bench/celery.py [--tasks N] [--pools solo,prefork] [--brokers kombu-redis,kelp-redis,...]
                           [--amqp-url URL] [--redis-url URL] [--json]

Every row starts one ``celery worker`` process (``-P solo``, or ``-P prefork -c 2``) on a fresh queue,
then a client sends N no-op tasks (default 10,000) with ``send_task`` and waits for every result through
the ``rpc://`` result backend (so each task crosses the broker twice: the task, and its result). The clock
runs from the first send to the last result, after a warm-up of 200 tasks. Rows:

- ``kombu-redis`` — Kombu's Redis transport (``redis://``); ``kelp-redis`` — ``kelp+redis://``
- ``kombu-amqp``  — Kombu's py-amqp transport (``amqp://``); ``kelp-amqp``  — ``kelp+amqp://``, whose
  publishes are confirmed, pipelined (kelp's delivery model); ``kelp-amqp-noconfirm`` — ``?confirms=false``,
  Kombu's own default (no publisher confirms)
- ``kelp-sqlite`` — ``kelp+sqlite:///`` on a file of its own (no server)

Ratios: kelp-redis / kombu-redis, kelp-amqp (and -noconfirm) / kombu-amqp, kelp-sqlite / kombu-redis.
A row whose results do not all arrive fails instead of reporting a rate. Worker, client and brokers share the
machine's cores: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

# Running this script puts bench/ first on sys.path, where this file (and bench/redis.py) would shadow
# the celery and redis packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]

from celery import Celery  # noqa: E402

import kelp.kombu  # noqa: E402, F401

WARMUP = 200

APP_SOURCE = """
import os
from celery import Celery
import kelp.kombu  # registers kelp+ URLs

app = Celery("bench_celery_app", broker=os.environ["BENCH_BROKER"], backend="rpc://")
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_default_exchange=os.environ["BENCH_QUEUE"],
    task_default_routing_key=os.environ["BENCH_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "4")),
)


@app.task(name="bench.noop")
def noop():
    return None
"""


def broker_urls(args: argparse.Namespace, tmp: str) -> dict[str, str]:
    sep = "&" if "?" in args.redis_url else "?"
    amqp_sep = "&" if "?" in args.amqp_url else "?"
    return {
        "kombu-redis": args.redis_url,
        "kelp-redis": f"kelp+{args.redis_url}{sep}prefix=bench-{uuid.uuid4().hex[:6]}",
        "kombu-amqp": args.amqp_url,
        "kelp-amqp": f"kelp+{args.amqp_url}",
        "kelp-amqp-noconfirm": f"kelp+{args.amqp_url}{amqp_sep}confirms=false",
        "kelp-sqlite": f"kelp+sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db",
    }


def make_client(url: str, queue: str) -> Celery:
    client = Celery("bench-client", broker=url, backend="rpc://")
    client.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        broker_connection_retry_on_startup=True,
    )
    return client


def run_row(url: str, pool: str, tasks: int, tmp: str) -> float:
    """Tasks per second for one broker URL and pool; the worker is stopped whatever happens."""
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, BENCH_BROKER=url, BENCH_QUEUE=queue, PYTHONPATH=tmp)
    pool_args = ["-P", "solo"] if pool == "solo" else ["-P", "prefork", "-c", "2"]
    log = open(os.path.join(tmp, f"worker-{queue}.log"), "wb")  # noqa: SIM115 - closed in finally
    name = f"{queue}@localhost"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_celery_app", "worker", "-n", name, "-l", "WARNING",
         "--without-gossip", "--without-mingle", *pool_args],
        env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = make_client(url, queue)
    try:
        _wait_ready(client, name, worker)
        _round_trip(client, WARMUP)
        started = time.perf_counter()
        _round_trip(client, tasks)
        return tasks / (time.perf_counter() - started)
    except Exception:
        log.flush()
        with open(log.name, errors="replace") as f:
            print(f"worker log ({url}):\n" + "".join(f.readlines()[-30:]), file=sys.stderr)
        raise
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        _delete_queue(client, queue)
        client.close()


def _round_trip(client: Celery, count: int) -> None:
    results = [client.send_task("bench.noop") for _ in range(count)]
    for result in results:
        result.get(timeout=120)


def _wait_ready(client: Celery, name: str, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}")
        if client.control.ping(destination=[name], timeout=0.5):
            return
    raise RuntimeError("worker did not answer ping")


def _delete_queue(client: Celery, queue: str) -> None:
    try:
        with client.connection_for_write() as connection:
            channel = connection.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
    except Exception as exc:  # a best-effort clean-up on a shared broker
        print(f"  (could not delete {queue}: {exc})", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--pools", default="solo")
    parser.add_argument(
        "--brokers", default="kombu-redis,kelp-redis,kombu-amqp,kelp-amqp,kelp-amqp-noconfirm,kelp-sqlite"
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("KELP_TEST_AMQP_URL", "amqp://guest:guest@localhost//")
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("KELP_TEST_REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kelp-bench-celery-") as tmp:
        with open(os.path.join(tmp, "bench_celery_app.py"), "w") as f:
            f.write(APP_SOURCE)
        urls = broker_urls(args, tmp)
        for pool in args.pools.split(","):
            for broker in args.brokers.split(","):
                rate = run_row(urls[broker], pool, args.tasks, tmp)
                rows.setdefault(pool, {})[broker] = rate
                if not args.json:
                    print(f"{pool:8} {broker:20} {rate:9.0f} tasks/s", flush=True)
    ratios = _ratios(rows)
    if args.json:
        print(json.dumps({"tasks": args.tasks, "rates": rows, "ratios": ratios}, indent=2))
        return
    for pool, pairs in ratios.items():
        for label, ratio in pairs.items():
            print(f"{pool:8} {label:36} {ratio:5.2f}x")


def _ratios(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    pairs = {
        "kelp-redis / kombu-redis": ("kelp-redis", "kombu-redis"),
        "kelp-amqp / kombu-amqp": ("kelp-amqp", "kombu-amqp"),
        "kelp-amqp-noconfirm / kombu-amqp": ("kelp-amqp-noconfirm", "kombu-amqp"),
        "kelp-sqlite / kombu-redis": ("kelp-sqlite", "kombu-redis"),
    }
    out: dict[str, dict[str, Any]] = {}
    for pool, rates in rows.items():
        out[pool] = {
            label: rates[a] / rates[b] for label, (a, b) in pairs.items() if a in rates and b in rates
        }
    return out


if __name__ == "__main__":
    main()
