"""Prometheus: FastStream's metric names, scraped and parsed; counters move with traffic; queue gauges."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import kelp
import kelp.aio
from kelp import _observe
from kelp.prometheus import KelpMetrics
from kelp.transport.base import QueueStats


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels, parsed from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"app_name": "shop", **labels}.items()))), 0.0)


@pytest.fixture
def metrics() -> Iterator[KelpMetrics]:
    metrics = KelpMetrics(CollectorRegistry(), app_name="shop")
    metrics.instrument()
    try:
        yield metrics
    finally:
        metrics.uninstrument()
    assert _observe.observer is None


def test_counters_follow_traffic(tmp_path: Any, metrics: KelpMetrics) -> None:
    url = f"sqlite:///{tmp_path}/metrics.db"
    metrics.watch_queues(url)
    broker = {"broker": "sqlite"}
    before = scrape(metrics.registry)
    assert (
        value(before, "kelp_published_messages_total", destination="orders", status="success", **broker) == 0
    )
    with kelp.Connection(url) as connection:
        queue = kelp.Queue("jobs", kelp.Exchange("orders", "direct"), "new")
        producer = connection.Producer(exchange=queue.exchange)
        for n in range(4):
            producer.publish({"n": n}, routing_key="new", declare=[queue])
        after_publish = scrape(metrics.registry)
        published = value(
            after_publish, "kelp_published_messages_total", destination="orders", status="success", **broker
        )
        assert published == 4
        assert (
            value(
                after_publish,
                "kelp_published_messages_duration_seconds_count",
                destination="orders",
                **broker,
            )
            == 4
        )
        assert value(after_publish, "kelp_queue_messages_ready", queue="jobs") == 4
        # The broker's own counters of the queue, read from the transport at each scrape.
        assert value(after_publish, "kelp_queue_messages_published_total", queue="jobs") == 4
        assert value(after_publish, "kelp_queue_messages_delivered_total", queue="jobs") == 0
        assert value(after_publish, "kelp_queue_messages_delayed", queue="jobs") == 0
        held = producer.publish({"n": "later"}, routing_key="new", countdown=60)
        assert value(scrape(metrics.registry), "kelp_queue_messages_delayed", queue="jobs") == 1
        assert producer.cancel_delayed(held) == 1

        outcomes = iter(["ack", "reject", "requeue-then-ack", "raise"])
        seen: list[int] = []

        def handle(body: Any, message: kelp.Message) -> None:
            seen.append(body["n"])
            outcome = next(outcomes)
            if outcome == "ack":
                message.ack()
            elif outcome == "reject":
                message.reject()
            elif outcome == "requeue-then-ack":
                message.requeue()
            else:
                raise KeyError("no such order")

        with connection.Consumer(queue, callbacks=[handle], prefetch_count=1):
            for _ in range(4):
                try:
                    connection.drain_events(timeout=5)
                except KeyError:
                    pass
            # the unsettled one is still held by this consumer
            during = scrape(metrics.registry)
            assert value(during, "kelp_queue_consumers", queue="jobs") == 1
            assert value(during, "kelp_queue_messages_unacked", queue="jobs") == 1
    samples = scrape(metrics.registry)
    handler = {"broker": "sqlite", "handler": "jobs"}
    assert value(samples, "kelp_received_messages_total", **handler) == 4
    assert value(samples, "kelp_received_processed_messages_duration_seconds_count", **handler) == 4
    assert value(samples, "kelp_received_messages_size_bytes_count", **handler) == 4
    for status, count in [("acked", 1), ("rejected", 1), ("nacked", 1), ("error", 1)]:
        assert value(samples, "kelp_received_processed_messages_total", status=status, **handler) == count
    assert (
        value(
            samples, "kelp_received_processed_messages_exceptions_total", exception_type="KeyError", **handler
        )
        == 1
    )
    assert value(samples, "kelp_received_messages_in_process", **handler) == 0
    # the requeued message and the one whose handler raised are back in the queue
    assert value(samples, "kelp_queue_messages_ready", queue="jobs") == 2
    # four deliveries (the requeued message twice), one ack; the cancelled delayed message never entered
    assert value(samples, "kelp_queue_messages_published_total", queue="jobs") == 4
    assert value(samples, "kelp_queue_messages_delivered_total", queue="jobs") == 4
    assert value(samples, "kelp_queue_messages_acked_total", queue="jobs") == 1


async def test_aio_face_and_faststream_prefix() -> None:
    metrics = KelpMetrics(CollectorRegistry(), prefix="faststream", app_name="shop")
    metrics.instrument()
    try:
        async with kelp.aio.Connection("memory://") as connection:
            queue = kelp.Queue("work")
            await connection.Producer().publish("x", routing_key="work", declare=[queue])
            async with connection.Consumer(queue) as consumer:
                async for message in consumer.iterate(limit=1, timeout=5):
                    await message.ack()
    finally:
        metrics.uninstrument()
    samples = scrape(metrics.registry)
    published = {"broker": "memory", "destination": "amq.default"}
    assert value(samples, "faststream_published_messages_total", status="success", **published) == 1
    received = {"broker": "memory", "handler": "work"}
    assert value(samples, "faststream_received_processed_messages_total", status="acked", **received) == 1


def test_queue_gauges_from_a_function() -> None:
    metrics = KelpMetrics(CollectorRegistry(), app_name="shop")
    metrics.watch_queues(stats=lambda: [("a", 3, 2, 1)])
    samples = scrape(metrics.registry)
    assert value(samples, "kelp_queue_messages_ready", queue="a") == 3
    assert value(samples, "kelp_queue_messages_unacked", queue="a") == 2
    assert value(samples, "kelp_queue_consumers", queue="a") == 1


def test_queue_counters_only_where_the_transport_counts() -> None:
    rows = [QueueStats("a", 3, 2, 1, 0, 10, 7, 5), QueueStats("b", 0, 0, 0)]
    metrics = KelpMetrics(CollectorRegistry(), app_name="shop")
    metrics.watch_queues(stats=lambda: rows)
    samples = scrape(metrics.registry)
    assert value(samples, "kelp_queue_messages_published_total", queue="a") == 10
    assert value(samples, "kelp_queue_messages_delivered_total", queue="a") == 7
    assert value(samples, "kelp_queue_messages_acked_total", queue="a") == 5
    names = {name for name, _ in samples}
    assert ("kelp_queue_messages_acked_total", (("app_name", "shop"), ("queue", "b"))) not in samples
    only_gauges = KelpMetrics(CollectorRegistry(), app_name="shop")
    only_gauges.watch_queues(stats=lambda: [("a", 3, 2, 1)])
    assert "kelp_queue_messages_published_total" in names
    assert not any(name.endswith("_total") for name, _ in scrape(only_gauges.registry))
