"""OpenTelemetry: one trace runs from a publish in one process to the processing in another (both faces)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import kelp
import kelp.aio
from kelp import _observe
from kelp.otel import KelpInstrumentor

# Run in a child process: instrument with the SDK, publish one message, print the finished spans as JSON.
PUBLISHER = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import kelp, kelp.aio
    from kelp.otel import KelpInstrumentor

    url, face = sys.argv[1], sys.argv[2]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    KelpInstrumentor().instrument(tracer_provider=provider)
    body = {"order": 42}
    props = dict(routing_key="orders.new", message_id="m-1", correlation_id="conv-9")
    if face == "sync":
        with kelp.Connection(url) as connection:
            queue = kelp.Queue("orders", kelp.Exchange("shop", "topic"), "orders.*")
            connection.Producer().publish(body, exchange=queue.exchange, declare=[queue], **props)
    else:
        async def main():
            async with kelp.aio.Connection(url) as connection:
                queue = kelp.Queue("orders", kelp.Exchange("shop", "topic"), "orders.*")
                await connection.Producer().publish(body, exchange=queue.exchange, declare=[queue], **props)
        asyncio.run(main())
    print(json.dumps([
        {"name": s.name, "kind": s.kind.name, "trace_id": s.context.trace_id, "span_id": s.context.span_id,
         "parent": s.parent.span_id if s.parent else None, "attributes": dict(s.attributes)}
        for s in exporter.get_finished_spans()
    ]))
    """
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    KelpInstrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        KelpInstrumentor().uninstrument()


def publish_in_child(url: str, face: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", PUBLISHER, url, face], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def check_trace(sent: list[dict[str, Any]], finished: tuple[ReadableSpan, ...]) -> None:
    [send] = sent
    assert send["name"] == "send shop"
    assert send["kind"] == "PRODUCER"
    assert send["parent"] is None
    assert send["attributes"] == {
        "messaging.system": "sqlite",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "shop",
        "messaging.rabbitmq.destination.routing_key": "orders.new",
        "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "conv-9",
        "messaging.message.body.size": len(b'{"order":42}'),
    }
    by_name = {span.name: span for span in finished}
    assert set(by_name) == {"process orders", "settle orders"}
    process, settle = by_name["process orders"], by_name["settle orders"]
    assert process.kind is SpanKind.CONSUMER
    assert process.context is not None
    assert process.parent is not None
    # One trace: the consumer's span is the child of the publisher's, across the process boundary.
    assert process.context.trace_id == send["trace_id"]
    assert process.parent.span_id == send["span_id"]
    assert [link.context.span_id for link in process.links] == [send["span_id"]]
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "sqlite"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "orders"
    assert attributes["messaging.rabbitmq.destination.routing_key"] == "orders.new"
    assert attributes["messaging.message.id"] == "m-1"
    assert attributes["messaging.message.conversation_id"] == "conv-9"
    assert attributes["messaging.message.body.size"] == len(b'{"order":42}')
    # The ack happened inside the processing: its span nests in the process span.
    assert settle.kind is SpanKind.CLIENT
    assert settle.parent is not None
    assert settle.parent.span_id == process.context.span_id
    assert dict(settle.attributes or {})["messaging.operation.type"] == "settle"
    assert dict(settle.attributes or {})["messaging.operation.name"] == "ack"


def test_trace_from_sync_publisher_to_sync_consumer(tmp_path: Any, spans: InMemorySpanExporter) -> None:
    url = f"sqlite:///{tmp_path}/trace.db"
    sent = publish_in_child(url, "sync")
    received = []
    with kelp.Connection(url) as connection:
        queue = kelp.Queue("orders", kelp.Exchange("shop", "topic"), "orders.*")

        def on_order(body: Any, message: kelp.Message) -> None:
            received.append(body)
            message.ack()

        with connection.Consumer(queue, callbacks=[on_order]):
            connection.drain_events(timeout=5)
    assert received == [{"order": 42}]
    check_trace(sent, spans.get_finished_spans())


async def test_trace_from_aio_publisher_to_aio_async_for(tmp_path: Any, spans: InMemorySpanExporter) -> None:
    url = f"sqlite:///{tmp_path}/trace.db"
    sent = publish_in_child(url, "aio")
    async with kelp.aio.Connection(url) as connection:
        queue = kelp.Queue("orders", kelp.Exchange("shop", "topic"), "orders.*")
        async with connection.Consumer(queue) as consumer:
            async for message in consumer.iterate(limit=1, timeout=5):
                assert message.decode() == {"order": 42}
                await message.ack()
    check_trace(sent, spans.get_finished_spans())


def test_callback_error_is_recorded_and_raised(spans: InMemorySpanExporter) -> None:
    with kelp.Connection("memory://") as connection:
        queue = kelp.Queue("boom")
        connection.Producer().publish("x", routing_key="boom", declare=[queue])

        def fail(body: Any, message: kelp.Message) -> None:
            message.reject()
            raise RuntimeError("bad order")

        with connection.Consumer(queue, callbacks=[fail]), pytest.raises(RuntimeError, match="bad order"):
            connection.drain_events(timeout=5)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    process = by_name["process boom"]
    assert process.status.status_code is StatusCode.ERROR
    assert dict(process.attributes or {})["error.type"] == "RuntimeError"
    assert dict(by_name["settle boom"].attributes or {})["messaging.operation.name"] == "reject"
    # The default exchange has no name; spans call it as RabbitMQ does.
    assert by_name["send amq.default"].kind is SpanKind.PRODUCER


async def test_metrics() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    KelpInstrumentor().instrument(tracer_provider=TracerProvider(), meter_provider=provider)
    try:
        async with kelp.aio.Connection("memory://") as connection:
            queue = kelp.Queue("work")
            producer = connection.Producer()
            for n in range(3):
                await producer.publish(n, routing_key="work", declare=[queue])
            async with connection.Consumer(queue) as consumer:
                async for message in consumer.iterate(limit=3, timeout=5):
                    await message.ack()
    finally:
        KelpInstrumentor().uninstrument()
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    assert sum(p.value for p in points["messaging.client.sent.messages"]) == 3
    assert sum(p.value for p in points["messaging.client.consumed.messages"]) == 3
    assert sum(p.count for p in points["messaging.process.duration"]) == 3
    operations = {
        (p.attributes["messaging.operation.type"], p.count)
        for p in points["messaging.client.operation.duration"]
    }
    assert operations == {("send", 3), ("settle", 3)}
    assert {p.attributes["messaging.system"] for p in points["messaging.client.sent.messages"]} == {"memory"}


def test_uninstrument_stops_everything(spans: InMemorySpanExporter) -> None:
    KelpInstrumentor().uninstrument()
    assert _observe.observer is None
    assert not KelpInstrumentor().is_instrumented
    with kelp.Connection("memory://") as connection:
        connection.Producer().publish("x", routing_key="q", declare=[kelp.Queue("q")])
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize(
    "traceparent",
    [
        5,
        {"nested": "table"},
        ["x"],
        "not-a-traceparent",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_foreign_trace_headers_never_stop_delivery(spans: InMemorySpanExporter, traceparent: Any) -> None:
    """A publisher may put anything in traceparent: the message is still processed (a new trace, or the
    one a bytes header names)."""
    received = []
    with kelp.Connection(f"memory://foreign-{uuid.uuid4().hex}") as connection:
        queue = kelp.Queue("foreign")
        connection.default_channel.declare_queue(queue)
        envelope = connection.Producer().prepare("x", routing_key="foreign")
        envelope.headers["traceparent"] = traceparent
        connection.default_channel.publish_batch([envelope])

        def handle(body: Any, message: kelp.Message) -> None:
            received.append(body)
            message.ack()

        with connection.Consumer(queue, callbacks=[handle]):
            connection.drain_events(timeout=5)
    assert received == ["x"]
    [process] = [span for span in spans.get_finished_spans() if span.name == "process foreign"]
    assert process.context is not None
    if isinstance(traceparent, bytes):
        assert process.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    else:
        assert process.parent is None
