"""Memory-transport benchmark: kelp, kelp.aio and Kombu 5.x on their in-memory brokers, in one run.

For each library: publish N messages (a ~256-byte JSON dict, persistent, one queue bound to a direct
exchange, ``Producer.publish(body, routing_key=..., declare=[queue])``), then consume them all with a
``Consumer`` (prefetch_count=100) whose callback acks each message, driven by ``drain_events(timeout=...)``.

Every run happens in its own subprocess, so imports and heaps never mix and the child's peak RSS is that
library's alone. Runs are repeated (best of ``--repeats``) with the libraries interleaved, so machine noise
hits all of them alike. Heap peak (tracemalloc) is measured in a separate pass, because tracing slows the
code it measures; its timings are discarded.

    python bench/memory.py [--messages N] [--repeats R] [--libraries kelp,kombu] [--no-tracemalloc] [--json]

Kombu is imported only here, to compare against; kelp itself never depends on it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

LIBRARIES = ("kelp", "kelp.aio", "kombu")
BODY_SIZE = 256
PREFETCH = 100
#: How long one drain_events call may wait; the queue is never empty while we drain, so it never runs out
#: unless messages went missing (then the run fails instead of hanging).
DRAIN_TIMEOUT = 5.0
TARGET_SPEEDUP = 3.0


@dataclass
class RunResult:
    """One scenario run: wall-clock seconds of each phase and what the consumer saw."""

    library: str
    messages: int
    publish_seconds: float
    publish_cpu_seconds: float
    consume_seconds: float
    consume_cpu_seconds: float
    received: int
    acked: int
    left_in_queue: int

    def check(self) -> None:
        """Raise unless every message was received and acked, and the queue is empty."""
        if not (self.received == self.acked == self.messages and self.left_in_queue == 0):
            raise RuntimeError(
                f"{self.library}: published {self.messages}, received {self.received}, acked {self.acked}, "
                f"{self.left_in_queue} left in the queue"
            )


def make_body(size: int = BODY_SIZE) -> dict[str, Any]:
    """A message body shaped like an application event, padded so its JSON encoding is ``size`` bytes."""
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


def _names() -> tuple[str, str]:
    """Fresh exchange and queue names, so repeated in-process runs (the smoke test) never share state."""
    suffix = uuid.uuid4().hex[:8]
    return f"bench.x.{suffix}", f"bench.q.{suffix}"


def _now() -> tuple[float, float]:
    """Wall-clock and process CPU time: the CPU figure shows how much of a slow run was contention."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


class _Counter:
    """The consumer's callback state: how many messages arrived and how many were acked."""

    def __init__(self) -> None:
        self.received = 0
        self.acked = 0


def _drain_until(drain: Callable[[], Any], counter: _Counter, messages: int, library: str) -> None:
    while counter.received < messages:
        try:
            drain()
        except TimeoutError:
            raise RuntimeError(
                f"{library}: only {counter.received} of {messages} messages arrived "
                f"(drain_events timed out after {DRAIN_TIMEOUT}s)"
            ) from None


# --- the scenarios -----------------------------------------------------------------------------------------


def run_kelp(messages: int, body: dict[str, Any] | None = None) -> RunResult:
    """The scenario with the sync API (``kelp``)."""
    import kelp

    body = make_body() if body is None else body
    exchange_name, queue_name = _names()
    exchange = kelp.Exchange(exchange_name, "direct")
    queue = kelp.Queue(queue_name, exchange, routing_key=queue_name)
    counter = _Counter()

    def on_message(payload: Any, message: kelp.Message) -> None:
        counter.received += 1
        message.ack()
        counter.acked += message.acknowledged

    with kelp.Connection("memory://") as conn:
        producer = kelp.Producer(conn, exchange=exchange)
        gc.collect()
        start = _now()
        for _ in range(messages):
            producer.publish(body, routing_key=queue_name, declare=[queue], delivery_mode=2)
        publish = _since(start)

        consumer = kelp.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        gc.collect()
        start = _now()
        consumer.consume()
        _drain_until(lambda: conn.drain_events(timeout=DRAIN_TIMEOUT), counter, messages, "kelp")
        consume = _since(start)
        consumer.cancel()
        left = conn.default_channel.queue_declare(queue_name, passive=True).message_count
    return RunResult("kelp", messages, *publish, *consume, counter.received, counter.acked, left)


async def run_kelp_aio_async(messages: int, body: dict[str, Any] | None = None) -> RunResult:
    """The scenario with the asyncio API (``kelp.aio``), inside a running event loop."""
    import kelp.aio

    body = make_body() if body is None else body
    exchange_name, queue_name = _names()
    exchange = kelp.aio.Exchange(exchange_name, "direct")
    queue = kelp.aio.Queue(queue_name, exchange, routing_key=queue_name)
    counter = _Counter()

    async def on_message(payload: Any, message: kelp.aio.Message) -> None:
        counter.received += 1
        await message.ack()
        counter.acked += message.acknowledged

    async with kelp.aio.Connection("memory://") as conn:
        producer = kelp.aio.Producer(conn, exchange=exchange)
        gc.collect()
        start = _now()
        for _ in range(messages):
            await producer.publish(body, routing_key=queue_name, declare=[queue], delivery_mode=2)
        publish = _since(start)

        consumer = kelp.aio.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        gc.collect()
        start = _now()
        await consumer.consume()
        while counter.received < messages:
            try:
                await conn.drain_events(timeout=DRAIN_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(
                    f"kelp.aio: only {counter.received} of {messages} messages arrived "
                    f"(drain_events timed out after {DRAIN_TIMEOUT}s)"
                ) from None
        consume = _since(start)
        await consumer.cancel()
        left = (await conn.default_channel.queue_declare(queue_name, passive=True)).message_count
    return RunResult("kelp.aio", messages, *publish, *consume, counter.received, counter.acked, left)


def run_kelp_aio(messages: int, body: dict[str, Any] | None = None) -> RunResult:
    """The asyncio scenario, run in a fresh event loop."""
    return asyncio.run(run_kelp_aio_async(messages, body))


def run_kombu(messages: int, body: dict[str, Any] | None = None) -> RunResult:
    """The same scenario with Kombu 5.x on its ``memory://`` transport, configured so that it never idles.

    Kombu's virtual transports poll: ``Transport.drain_events`` asks each channel for one message and, when
    every queue is empty, sleeps ``polling_interval`` seconds (1.0 by default) before asking again
    (kombu/transport/virtual/base.py). Here the queue holds every message before consuming starts and each
    callback acks at once, so the prefetch window (QoS.can_consume) never closes and that sleep is never
    reached; ``polling_interval=0`` makes sure of it, so what we time is Kombu's delivery path and not its
    idle waits. Kombu's memory channel base64-encodes bodies (its default ``body_encoding``); that is what
    Kombu users get, so it is left on.
    """
    import kombu

    body = make_body() if body is None else body
    exchange_name, queue_name = _names()
    exchange = kombu.Exchange(exchange_name, "direct")
    queue = kombu.Queue(queue_name, exchange, routing_key=queue_name)
    counter = _Counter()

    def on_message(payload: Any, message: Any) -> None:
        counter.received += 1
        message.ack()
        counter.acked += message.acknowledged

    with kombu.Connection("memory://", transport_options={"polling_interval": 0}) as conn:
        producer = kombu.Producer(conn, exchange=exchange)
        gc.collect()
        start = _now()
        for _ in range(messages):
            producer.publish(body, routing_key=queue_name, declare=[queue], delivery_mode=2)
        publish = _since(start)

        consumer = kombu.Consumer(
            conn, [queue], callbacks=[on_message], prefetch_count=PREFETCH, accept=["json"]
        )
        gc.collect()
        start = _now()
        consumer.consume()
        _drain_until(lambda: conn.drain_events(timeout=DRAIN_TIMEOUT), counter, messages, "kombu")
        consume = _since(start)
        consumer.cancel()
        left = conn.default_channel.queue_declare(queue=queue_name, passive=True).message_count
    return RunResult("kombu", messages, *publish, *consume, counter.received, counter.acked, left)


SCENARIOS: dict[str, Callable[[int, dict[str, Any] | None], RunResult]] = {
    "kelp": run_kelp,
    "kelp.aio": run_kelp_aio,
    "kombu": run_kombu,
}


# --- one run per subprocess --------------------------------------------------------------------------------


def _import_library(library: str) -> None:
    # Imported before measuring so that the heap trace covers the run, not module loading (RSS covers both).
    if library == "kombu":
        import kombu  # noqa: F401
    elif library == "kelp":
        import kelp
    else:
        import kelp.aio  # noqa: F401


def child(library: str, messages: int, trace: bool) -> dict[str, Any]:
    """Run one scenario in this process and report it (what ``--child`` prints as JSON)."""
    _import_library(library)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if trace:
        tracemalloc.start()
    result = SCENARIOS[library](messages, None)
    heap_peak = tracemalloc.get_traced_memory()[1] if trace else None
    if trace:
        tracemalloc.stop()
    result.check()
    return {
        **asdict(result),
        "traced": trace,
        "rss_after_import_kb": rss_before_kb,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # kilobytes on Linux
        "tracemalloc_peak_bytes": heap_peak,
    }


def spawn(library: str, messages: int, trace: bool) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter and return its report."""
    command = [sys.executable, os.path.abspath(__file__), "--child", library, "--messages", str(messages)]
    if trace:
        command.append("--tracemalloc")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{library} run failed (exit {done.returncode}):\n{done.stderr.strip()}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


# --- the whole benchmark -----------------------------------------------------------------------------------


def benchmark(
    messages: int,
    repeats: int = 3,
    libraries: tuple[str, ...] = LIBRARIES,
    trace: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every library ``repeats`` times (interleaved, rotating the order), then one traced pass each."""
    runs: dict[str, list[dict[str, Any]]] = {library: [] for library in libraries}
    for round_ in range(repeats):
        shift = round_ % len(libraries)
        for library in libraries[shift:] + libraries[:shift]:
            report = spawn(library, messages, trace=False)
            runs[library].append(report)
            if progress is not None:
                publish, consume = messages / report["publish_seconds"], messages / report["consume_seconds"]
                progress(
                    f"round {round_ + 1}/{repeats} {library:8} publish {publish:>9,.0f} msg/s"
                    f"  consume+ack {consume:>9,.0f} msg/s"
                )
    traced: dict[str, dict[str, Any]] = {}
    if trace:
        for library in libraries:
            traced[library] = spawn(library, messages, trace=True)
            if progress is not None:
                heap = traced[library]["tracemalloc_peak_bytes"] / 2**20
                progress(f"traced   {library:8} heap peak {heap:.1f} MiB")

    results: dict[str, dict[str, Any]] = {}
    for library, reports in runs.items():
        results[library] = {
            "publish_msg_per_s": messages / min(r["publish_seconds"] for r in reports),
            "consume_ack_msg_per_s": messages / min(r["consume_seconds"] for r in reports),
            "publish_cpu_msg_per_s": messages / min(r["publish_cpu_seconds"] for r in reports),
            "consume_ack_cpu_msg_per_s": messages / min(r["consume_cpu_seconds"] for r in reports),
            "peak_rss_kb": statistics.median(r["peak_rss_kb"] for r in reports),
            "rss_after_import_kb": statistics.median(r["rss_after_import_kb"] for r in reports),
            "tracemalloc_peak_bytes": traced[library]["tracemalloc_peak_bytes"]
            if library in traced
            else None,
            "runs": reports,
        }
    return {
        "messages": messages,
        "repeats": repeats,
        "body_json_bytes": len(json.dumps(make_body())),
        "prefetch_count": PREFETCH,
        "python": platform.python_version(),
        "versions": _versions(libraries),
        "results": results,
        "ratios": _ratios(results),
    }


def _versions(libraries: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in {"kombu" if library == "kombu" else "kelp" for library in libraries}:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "?"
    return versions


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """kelp/kombu and kelp.aio/kombu: throughput ratios (higher is better) and memory ratios (lower is)."""
    base = results.get("kombu")
    if base is None:
        return {}
    ratios: dict[str, dict[str, float | None]] = {}
    for library in ("kelp", "kelp.aio"):
        mine = results.get(library)
        if mine is None:
            continue
        heap, base_heap = mine["tracemalloc_peak_bytes"], base["tracemalloc_peak_bytes"]
        ratios[f"{library}/kombu"] = {
            "publish": mine["publish_msg_per_s"] / base["publish_msg_per_s"],
            "consume_ack": mine["consume_ack_msg_per_s"] / base["consume_ack_msg_per_s"],
            "publish_cpu": mine["publish_cpu_msg_per_s"] / base["publish_cpu_msg_per_s"],
            "consume_ack_cpu": mine["consume_ack_cpu_msg_per_s"] / base["consume_ack_cpu_msg_per_s"],
            "peak_rss": mine["peak_rss_kb"] / base["peak_rss_kb"],
            "tracemalloc_peak": heap / base_heap if heap and base_heap else None,
        }
    return ratios


def format_report(report: dict[str, Any]) -> str:
    """The report as a readable table."""
    results, ratios = report["results"], report["ratios"]
    versions = ", ".join(f"{name} {v}" for name, v in sorted(report["versions"].items()))
    lines = [
        f"memory:// benchmark: {report['messages']:,} messages of {report['body_json_bytes']} JSON bytes, "
        f"prefetch {report['prefetch_count']}, best of {report['repeats']} "
        f"(Python {report['python']}; {versions})",
        "",
        f"{'library':<10}{'publish msg/s':>15}{'consume+ack msg/s':>19}{'peak RSS MiB':>14}"
        f"{'(after import)':>16}{'heap peak MiB':>15}",
    ]
    for library, row in results.items():
        heap = row["tracemalloc_peak_bytes"]
        lines.append(
            f"{library:<10}{row['publish_msg_per_s']:>15,.0f}{row['consume_ack_msg_per_s']:>19,.0f}"
            f"{row['peak_rss_kb'] / 1024:>14.1f}{row['rss_after_import_kb'] / 1024:>16.1f}"
            f"{'-' if heap is None else f'{heap / 2**20:.1f}':>15}"
        )
    if ratios:
        lines += [
            "",
            f"{'ratio':<16}{'publish':>10}{'consume+ack':>13}{'peak RSS':>10}{'heap peak':>11}   "
            f"target: >= {TARGET_SPEEDUP:g}x, >= {TARGET_SPEEDUP:g}x, <= 1.00, <= 1.00",
        ]
        for name, row in ratios.items():
            heap = row["tracemalloc_peak"]
            met = (
                row["publish"] >= TARGET_SPEEDUP
                and row["consume_ack"] >= TARGET_SPEEDUP
                and row["peak_rss"] <= 1.0
                and (heap is None or heap <= 1.0)
            )
            lines.append(
                f"{name:<16}{row['publish']:>9.2f}x{row['consume_ack']:>12.2f}x{row['peak_rss']:>10.2f}"
                f"{'-' if heap is None else f'{heap:.2f}':>11}   {'met' if met else 'MISSED'}"
            )
        lines += ["", "the same throughput ratios by process CPU time (less sensitive to a busy machine):"]
        for name, row in ratios.items():
            lines.append(f"{name:<16}{row['publish_cpu']:>9.2f}x{row['consume_ack_cpu']:>12.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run (default 100,000)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per library; the best is kept (default 3)"
    )
    parser.add_argument(
        "--libraries", default=",".join(LIBRARIES), help=f"comma-separated subset of {','.join(LIBRARIES)}"
    )
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced heap-peak pass")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.messages, args.tracemalloc)))
        return 0
    libraries = tuple(name.strip() for name in args.libraries.split(",") if name.strip())
    unknown = set(libraries) - set(LIBRARIES)
    if unknown or not libraries:
        parser.error(f"unknown libraries: {sorted(unknown)}; choose from {', '.join(LIBRARIES)}")
    progress = None if args.json else lambda line: print(line, file=sys.stderr, flush=True)
    report = benchmark(args.messages, args.repeats, libraries, not args.no_tracemalloc, progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
