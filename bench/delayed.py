"""Delayed delivery: how late due messages arrive, and what a large backlog of them costs.

    python bench/delayed.py                                  # lateness on memory, sqlite (+ redis, amqp,
                                                             #   postgres when KELP_TEST_REDIS_URL /
                                                             #   _AMQP_URL / _POSTGRES_URL are set)
    python bench/delayed.py --transports sqlite --messages 2000 --spread 3   # a quick run
    python bench/delayed.py --pending 1000000 --transports sqlite,redis      # the backlog measure
    python bench/delayed.py --json

**Lateness**: a consumer (its own connection, in a thread) consumes one queue while the main thread
publishes ``--messages`` (10,000) messages with due times spread at random over ``--spread`` (10) seconds,
starting ``--lead`` (3) seconds after the first publish, so that all are pending before any is due. Each
body carries its due time; lateness is arrival (wall clock) minus due time: p50, p99, max, and how many
arrived early (must be 0). The run fails if a message is lost or early.

**Backlog** (``--pending N``): N delayed messages due in an hour are published one by one, with the
client's RSS before and after (the broker holds them: it should stay flat); then 1,000 messages due within
2 s are published on top of that backlog and consumed, to show that due messages are still on time
(lateness as above); then N immediate messages to another queue (the same API, the same body), for the
ratio of the two publish rates. The queues are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

# bench/redis.py would shadow the redis package: this directory is not an import root.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, "..", "src"))

import kelp  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def url_for(transport: str, workdir: str) -> str | None:
    if transport == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if transport == "sqlite":
        return f"sqlite:///{workdir}/{uuid.uuid4().hex}.db"
    if transport == "redis":
        base = os.environ.get("KELP_TEST_REDIS_URL")
        if not base:
            return None
        return f"{base}{'&' if '?' in base else '?'}prefix=bench{uuid.uuid4().hex[:8]}"
    if transport == "amqp":
        return os.environ.get("KELP_TEST_AMQP_URL")
    if transport == "postgres":
        base = os.environ.get("KELP_TEST_POSTGRES_URL")
        if not base:
            return None
        return f"{base}{'&' if '?' in base else '?'}schema=bench{uuid.uuid4().hex[:8]}"
    raise SystemExit(f"unknown transport {transport!r}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Receiver(threading.Thread):
    """Consumes ``queue`` on a connection of its own, recording (arrival - due) of each message."""

    def __init__(self, url: str, queue: str, expected: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.expected, self.timeout = url, queue, expected, timeout
        self.lateness: list[float] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with kelp.Connection(self.url) as conn:

                def on_message(body: Any, message: Any) -> None:
                    self.lateness.append(time.time() - body["due"])
                    message.ack()

                with conn.Consumer([kelp.Queue(self.queue)], callbacks=[on_message], prefetch_count=200):
                    self.ready.set()
                    deadline = time.monotonic() + self.timeout
                    while len(self.lateness) < self.expected and time.monotonic() < deadline:
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            pass
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()


def lateness_summary(lateness: list[float], expected: int) -> dict[str, Any]:
    if len(lateness) != expected:
        raise SystemExit(f"lost messages: {len(lateness)} of {expected} arrived")
    early = sum(1 for value in lateness if value < 0)
    if early:
        raise SystemExit(f"{early} messages arrived early (worst {min(lateness) * 1000:.1f} ms)")
    return {
        "count": expected,
        "p50_ms": round(statistics.median(lateness) * 1000, 1),
        "p99_ms": round(percentile(lateness, 0.99) * 1000, 1),
        "max_ms": round(max(lateness) * 1000, 1),
    }


def run_lateness(
    url: str, count: int, spread: float, lead: float, queue: str | None = None
) -> dict[str, Any]:
    """Publish ``count`` messages due over ``spread`` s, ``lead`` s from now, to ``queue`` (a new one by
    default, deleted at the end) and measure their lateness as a consumer receives them."""
    own = queue is None
    queue = queue or f"delayed-{uuid.uuid4().hex[:8]}"
    with kelp.Connection(url) as conn:
        kelp.Queue(queue)(conn.default_channel).declare()
        receiver = Receiver(url, queue, count, timeout=lead + spread + 60)
        receiver.start()
        receiver.ready.wait(30)
        if receiver.error:
            raise receiver.error
        producer = conn.Producer()
        start = time.time() + lead
        rng = random.Random(13)
        began = time.perf_counter()
        for _ in range(count):
            due = start + rng.random() * spread
            producer.publish({"due": due}, routing_key=queue, countdown=max(0.0, due - time.time()))
        conn.flush()
        published = time.perf_counter() - began
        receiver.join(lead + spread + 90)
        if receiver.error:
            raise receiver.error
        result = lateness_summary(receiver.lateness, count)
        result["publish_s"] = round(published, 2)
        if published > lead:
            result["note"] = (
                "publishing took longer than --lead: the first messages were due before all were sent"
            )
        if own:
            conn.default_channel.queue_delete(queue)
    return result


def run_backlog(url: str, pending: int) -> dict[str, Any]:
    held, ready = f"backlog-{uuid.uuid4().hex[:8]}", f"immediate-{uuid.uuid4().hex[:8]}"
    body = {"due": 0.0, "pad": "x" * 100}
    with kelp.Connection(url) as conn:
        channel = conn.default_channel
        for name in (held, ready):
            kelp.Queue(name)(channel).declare()
        producer = conn.Producer()

        def publish_all(label: str, queue: str, countdown: float | None) -> float:
            began = time.perf_counter()
            for n in range(pending):
                producer.publish(body, routing_key=queue, countdown=countdown)
                if n % 100_000 == 0 and n:
                    print(f"  {label}: {n:,} published", file=sys.stderr)
            conn.flush()
            return pending / (time.perf_counter() - began)

        rss_before = rss_mib()
        delayed_rate = publish_all("delayed", held, 3600.0)
        rss_after = rss_mib()
        stats = {row[0]: row for row in conn.transport.queue_stats()}
        # On top of the backlog (before the immediate messages: their backlog is another measure).
        on_time = run_lateness(url, 1000, spread=1.0, lead=1.0, queue=held)
        immediate_rate = publish_all("immediate", ready, None)
        channel.queue_delete(held)
        channel.queue_delete(ready)
    return {
        "pending": pending,
        "delayed_publish_per_s": round(delayed_rate),
        "immediate_publish_per_s": round(immediate_rate),
        "ratio": round(delayed_rate / immediate_rate, 3),
        "rss_before_mib": round(rss_before, 1),
        "rss_after_mib": round(rss_after, 1),
        "delayed_counted": getattr(stats[held], "delayed", None),
        "on_time_with_backlog": on_time,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transports", default="memory,sqlite,redis,amqp,postgres")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=10.0)
    parser.add_argument("--lead", type=float, default=3.0)
    parser.add_argument("--pending", type=int, default=0, help="run the backlog measure with N messages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for transport in [t.strip() for t in args.transports.split(",") if t.strip()]:
            url = url_for(transport, workdir)
            if url is None:
                print(f"{transport}: skipped (no server URL in the environment)", file=sys.stderr)
                continue
            print(f"{transport}: running", file=sys.stderr)
            if args.pending:
                results[transport] = run_backlog(url, args.pending)
            else:
                results[transport] = run_lateness(url, args.messages, args.spread, args.lead)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for transport, result in results.items():
        if args.pending:
            late = result["on_time_with_backlog"]
            print(
                f"{transport:8} {result['pending']:>9,} pending:"
                f" delayed {result['delayed_publish_per_s']:>7,}/s"
                f"  immediate {result['immediate_publish_per_s']:>7,}/s  ratio {result['ratio']:.2f}"
                f"  RSS {result['rss_before_mib']:.0f} -> {result['rss_after_mib']:.0f} MiB"
                f"  on time: p50 {late['p50_ms']} ms p99 {late['p99_ms']} ms max {late['max_ms']} ms"
            )
        else:
            print(
                f"{transport:8} {result['count']:>6,} messages over {args.spread:g} s: lateness p50 "
                f"{result['p50_ms']} ms  p99 {result['p99_ms']} ms  max {result['max_ms']} ms"
                f"  (published in {result['publish_s']} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
