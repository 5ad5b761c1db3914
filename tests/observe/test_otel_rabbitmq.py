"""On RabbitMQ, kelp's trace headers are the W3C ones other clients read and write (here: plain pika)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import kelp
from kelp.otel import KelpInstrumentor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def amqp_url() -> str:
    if "amqp" not in os.environ.get("KELP_TEST_TRANSPORTS", "memory").split(","):
        pytest.skip("KELP_TEST_TRANSPORTS does not name amqp")
    return os.environ["KELP_TEST_AMQP_URL"]


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


def test_pika_sees_kelp_trace_and_kelp_continues_pikas(amqp_url: str, spans: InMemorySpanExporter) -> None:
    name = f"kelp-otel-{uuid.uuid4().hex[:8]}"
    params = pika.URLParameters(amqp_url)
    with pika.BlockingConnection(params) as foreign:
        channel = foreign.channel()
        channel.queue_declare(name, auto_delete=False)
        try:
            # kelp publishes; pika reads the traceparent kelp wrote.
            with kelp.Connection(amqp_url) as connection:
                connection.Producer().publish({"from": "kelp"}, routing_key=name)
                connection.flush()
            method, properties, _ = _get(channel, name)
            channel.basic_ack(method.delivery_tag)
            [send] = [s for s in spans.get_finished_spans() if s.name == "send amq.default"]
            assert send.context is not None
            version, trace_id, span_id, _flags = properties.headers["traceparent"].split("-")
            assert (version, int(trace_id, 16), int(span_id, 16)) == (
                "00",
                send.context.trace_id,
                send.context.span_id,
            )

            # pika publishes with a traceparent; kelp's process span continues that trace.
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            channel.basic_publish("", name, b'{"from": "pika"}', pika.BasicProperties(headers=headers))
            with kelp.Connection(amqp_url) as connection:
                received: list[Any] = []

                def handle(body: Any, message: kelp.Message) -> None:
                    received.append(body)
                    message.ack()

                with connection.Consumer(kelp.Queue(name, no_declare=True), callbacks=[handle]):
                    connection.drain_events(timeout=10)
            assert received
            [process] = [s for s in spans.get_finished_spans() if s.name == f"process {name}"]
            assert process.context is not None
            assert process.parent is not None
            assert process.context.trace_id == int(TRACE_ID, 16)
            assert process.parent.span_id == int(PARENT_ID, 16)
            assert dict(process.attributes or {})["messaging.system"] == "rabbitmq"
        finally:
            channel.queue_delete(name)


def _get(channel: Any, queue: str) -> Any:
    for _ in range(100):
        method, properties, body = channel.basic_get(queue)
        if method is not None:
            return method, properties, body
        channel.connection.sleep(0.05)
    raise AssertionError(f"nothing arrived in {queue}")
