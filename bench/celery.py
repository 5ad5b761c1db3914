"""Celery on kelp against Celery on Kombu's own transports: no-op tasks through one real worker.

    eval "$(scripts/redis.sh start)"; eval "$(scripts/rabbitmq.sh start)"
    python bench/celery.py [--tasks N] [--pools solo,prefork] [--brokers kombu-redis,kelp-redis,...]
                           [--repeat N] [--amqp-url URL] [--redis-url URL] [--json]

Every row starts one ``celery worker`` process (``-P solo``, or ``-P prefork -c 2``) on a fresh queue,
then a client sends N no-op tasks (default 10,000) with ``send_task`` and waits for every result through
the ``rpc://`` result backend (so each task crosses the broker twice: the task, and its result). The clock
runs from the first send to the last result, after a warm-up of 200 tasks. Rows:

- ``kombu-redis`` — Kombu's Redis transport (``redis://``); ``kelp-redis`` — ``kelp+redis://``
- ``kombu-amqp``  — Kombu's py-amqp transport (``amqp://``); ``kelp-amqp``  — ``kelp+amqp://``, whose
  publishes are confirmed, pipelined (kelp's delivery model); ``kelp-amqp-noconfirm`` — ``?confirms=false``,
  Kombu's own default (no publisher confirms)
- ``kelp-sqlite`` — ``kelp+sqlite:///`` on a file of its own (no server)
- ``kelp-postgres`` — ``kelp+postgresql://`` in a schema of its own (``--postgres-url``, default
  ``KELP_TEST_POSTGRES_URL``); not among the default rows: ask for it with ``--brokers``

Ratios: kelp-redis / kombu-redis, kelp-amqp (and -noconfirm) / kombu-amqp, kelp-sqlite and kelp-postgres /
kombu-redis (the engines without a Kombu transport of their own that Celery supports).
``--repeat N`` runs the rows N times over, alternating, and reports medians and each round's ratios.
A row whose results do not all arrive fails instead of reporting a rate. Worker, client and brokers share the
machine's cores: read the ratios, not the absolute numbers.

Where the time goes (Linux): each row also reports CPU microseconds per task, over the timed window, for the
worker's main process, its pool (every process below the worker: prefork children, the socket keeper), the
client (this process) and the broker (the process listening on the URL's port and the processes below it,
such as PostgreSQL's backends, when it can be seen; a shared broker also counts what others make it do).
Read from ``/proc/<pid>/stat`` (user + system time; children that exit count through their parent's
reaped-children times).
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    pg_sep = "&" if "?" in args.postgres_url else "?"
    return {
        "kombu-redis": args.redis_url,
        "kelp-redis": f"kelp+{args.redis_url}{sep}prefix=bench-{uuid.uuid4().hex[:6]}",
        "kombu-amqp": args.amqp_url,
        "kelp-amqp": f"kelp+{args.amqp_url}",
        "kelp-amqp-noconfirm": f"kelp+{args.amqp_url}{amqp_sep}confirms=false",
        "kelp-sqlite": f"kelp+sqlite:///{tmp}/bench-{uuid.uuid4().hex[:6]}.db",
        "kelp-postgres": f"kelp+{args.postgres_url}{pg_sep}schema=bench_{uuid.uuid4().hex[:6]}",
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


def run_row(url: str, pool: str, tasks: int, tmp: str) -> tuple[float, dict[str, float]]:
    """Tasks per second for one broker URL and pool, and CPU µs per task by process group; the worker is
    stopped whatever happens."""
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
        broker = _listener_pid(url)
        before = _cpu_groups(worker.pid, broker)
        started = time.perf_counter()
        _round_trip(client, tasks)
        rate = tasks / (time.perf_counter() - started)
        after = _cpu_groups(worker.pid, broker)
        cpu = {group: (after[group] - before[group]) * 1e6 / tasks for group in after if group in before}
        return rate, cpu
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


# -- CPU accounting (Linux /proc) -------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CPU_GROUPS = ("worker", "pool", "client", "broker")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (index 0 is field 3, the state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cpu_groups(worker: int, broker: int | None) -> dict[str, float]:
    """CPU seconds so far (user + system) of each process group; a group that cannot be read is left out."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[float, float]] = {}  # pid -> (own, reaped children)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
                own = (int(fields[11]) + int(fields[12])) / _TICK
                times[int(entry)] = (own, (int(fields[13]) + int(fields[14])) / _TICK)
    out: dict[str, float] = {}
    if worker in times:
        out["worker"] = times[worker][0]
        below = [pid for pid in parents if _descends(pid, worker, parents)]
        out["pool"] = times[worker][1] + sum(times[pid][0] + times[pid][1] for pid in below)
    usage = os.times()
    out["client"] = usage.user + usage.system
    if broker is not None and broker in times:
        serving = [pid for pid in parents if _descends(pid, broker, parents)]  # PostgreSQL's backends
        out["broker"] = times[broker][0] + sum(times[pid][0] for pid in serving)
    return out


def _descends(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == ancestor:
            return True
    return False


def _listener_pid(url: str) -> int | None:
    """The local process listening on the broker URL's TCP port (None: no port, or not ours to see)."""
    match = re.search(r"://(?:[^@/]*@)?[^:/?]*:(\d+)", url)
    if match is None or not os.path.isdir("/proc"):
        return None
    port = int(match.group(1))
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the rows this many times over, alternating, and report the medians (a shared machine's "
        "load changes from minute to minute: the pairs of each round ran under about the same load)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("KELP_TEST_POSTGRES_URL", "postgresql://localhost/kelp"),
        help="the server of the kelp-postgres row (not in the default rows: it needs a PostgreSQL server)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds: list[dict[str, dict[str, float]]] = []  # per round: pool -> broker -> tasks/s
    usages: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="kelp-bench-celery-") as tmp:
        with open(os.path.join(tmp, "bench_celery_app.py"), "w") as f:
            f.write(APP_SOURCE)
        urls = broker_urls(args, tmp)
        for number in range(1, args.repeat + 1):
            rows: dict[str, dict[str, float]] = {}
            for pool in args.pools.split(","):
                for broker in args.brokers.split(","):
                    rate, usage = run_row(urls[broker], pool, args.tasks, tmp)
                    rows.setdefault(pool, {})[broker] = rate
                    usages.setdefault(pool, {}).setdefault(broker, []).append(usage)
                    if not args.json:
                        label = f"{pool} #{number}" if args.repeat > 1 else pool
                        groups = "  ".join(f"{g} {usage[g]:4.0f}" for g in CPU_GROUPS if g in usage)
                        print(
                            f"{label:10} {broker:20} {rate:9.0f} tasks/s   CPU µs/task: {groups}", flush=True
                        )
            rounds.append(rows)
    rates = {
        pool: {broker: _median([r[pool][broker] for r in rounds]) for broker in rounds[0][pool]}
        for pool in rounds[0]
    }
    cpu = {
        pool: {
            broker: {g: _median([u[g] for u in samples if g in u]) for g in CPU_GROUPS if g in samples[0]}
            for broker, samples in by_broker.items()
        }
        for pool, by_broker in usages.items()
    }
    ratios = _ratios(rates)
    per_round = [_ratios(r) for r in rounds]
    if args.json:
        report = {
            "tasks": args.tasks,
            "repeat": args.repeat,
            "rates": rates,
            "ratios": ratios,
            "cpu_us_per_task": cpu,
            "rounds": rounds,
        }
        print(json.dumps(report, indent=2))
        return
    if args.repeat > 1:
        print(f"medians of {args.repeat} rounds:")
        for pool, by_broker in rates.items():
            for broker, rate in by_broker.items():
                groups = "  ".join(f"{g} {v:4.0f}" for g, v in cpu[pool][broker].items())
                print(f"{pool:10} {broker:20} {rate:9.0f} tasks/s   CPU µs/task: {groups}")
    for pool, pairs in ratios.items():
        for label, ratio in pairs.items():
            each = ", ".join(f"{r[pool][label]:.2f}" for r in per_round) if args.repeat > 1 else ""
            print(f"{pool:10} {label:36} {ratio:5.2f}x" + (f"   (each round: {each})" if each else ""))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _ratios(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    pairs = {
        "kelp-redis / kombu-redis": ("kelp-redis", "kombu-redis"),
        "kelp-amqp / kombu-amqp": ("kelp-amqp", "kombu-amqp"),
        "kelp-amqp-noconfirm / kombu-amqp": ("kelp-amqp-noconfirm", "kombu-amqp"),
        "kelp-sqlite / kombu-redis": ("kelp-sqlite", "kombu-redis"),
        "kelp-postgres / kombu-redis": ("kelp-postgres", "kombu-redis"),
    }
    out: dict[str, dict[str, Any]] = {}
    for pool, rates in rows.items():
        out[pool] = {
            label: rates[a] / rates[b] for label, (a, b) in pairs.items() if a in rates and b in rates
        }
    return out


if __name__ == "__main__":
    main()
