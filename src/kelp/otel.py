"""OpenTelemetry tracing and metrics for kelp, both faces (``pip install kelp[otel]``).

    from kelp.otel import KelpInstrumentor
    KelpInstrumentor().instrument()      # or instrument(tracer_provider=..., meter_provider=...)
    ...
    KelpInstrumentor().uninstrument()

Once instrumented, every connection of the process (``kelp`` and ``kelp.aio``) reports, following
OpenTelemetry's messaging semantic conventions:

* a PRODUCER span ``send {exchange}`` per published message (``amq.default`` for the default exchange),
  whose W3C trace context (``traceparent``, ``tracestate``) is written into the message's headers, so a
  consumer in another process continues the same trace (and pika / aio-pika instrumentation reads it);
* a CONSUMER span ``process {queue}`` around a consumer's callbacks, or around the body of an
  ``async for`` / ``for`` over ``Consumer.iterate``; its parent is the context the message carried, and it
  also links to it;
* a CLIENT span ``settle {queue}`` for each ack, reject or requeue;
* the metrics ``messaging.client.operation.duration`` (send and settle), ``messaging.client.sent.messages``,
  ``messaging.client.consumed.messages`` and ``messaging.process.duration``.

Instrumentation observes and never changes delivery: a message is acked, rejected or redelivered exactly as
it would be without it. An exception raised by a callback is recorded on the process span and propagates
as before. Not instrumented, kelp pays one attribute load per publish and per delivery.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from typing import Any

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.metrics import MeterProvider, get_meter
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TracerProvider
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError("kelp.otel needs OpenTelemetry: pip install 'kelp[otel]'") from exc

from kelp import _observe
from kelp._envelope import Envelope

__all__ = ["KelpInstrumentor"]

_SCOPE = "kelp"
_DEFAULT_EXCHANGE = "amq.default"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("kelp")
    except Exception:  # an uninstalled checkout: the scope then carries no version
        return ""


class KelpInstrumentor:
    """Turns kelp's instrumentation on and off for the whole process (one instance is shared)."""

    _instance: KelpInstrumentor | None = None
    _observer: _Telemetry | None = None

    def __new__(cls) -> KelpInstrumentor:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    @property
    def is_instrumented(self) -> bool:
        return self._observer is not None

    def instrument(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **_: Any,
    ) -> None:
        """Start tracing and measuring every publish, delivery and settlement (a no-op if already on).

        Spans go to ``tracer_provider`` and metrics to ``meter_provider``, by default the global ones."""
        if self._observer is not None:
            return
        observer = _Telemetry(tracer_provider, meter_provider)
        type(self)._observer = observer
        _observe.install(observer)

    def uninstrument(self, **_: Any) -> None:
        """Stop; spans already started end normally."""
        observer = self._observer
        if observer is not None:
            _observe.uninstall(observer)
            type(self)._observer = None


class _Telemetry:
    """The observer: makes spans, carries context in headers, records metrics."""

    def __init__(self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
        version = _version()
        self.tracer = trace.get_tracer(_SCOPE, version, tracer_provider)
        meter = get_meter(_SCOPE, version, meter_provider)
        self.operation_duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s", description="Duration of a messaging operation"
        )
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages a producer sent"
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Messages delivered to a consumer",
        )
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of processing one message"
        )
        # message id() -> the queue it was taken from, while it is being processed (settle spans name it).
        self._queues: dict[int, str] = {}

    # --- publish ---------------------------------------------------------------------------------------

    def publish_start(self, connection: Any, envelopes: Sequence[Envelope]) -> _observe.Done:
        system = _observe.messaging_system(connection)
        started = time.perf_counter()
        spans = []
        for envelope in envelopes:
            destination = envelope.exchange or _DEFAULT_EXCHANGE
            attributes = _message_attributes(system, envelope.properties, len(envelope.body))
            attributes["messaging.operation.type"] = "send"
            attributes["messaging.operation.name"] = "publish"
            attributes["messaging.destination.name"] = destination
            attributes["messaging.rabbitmq.destination.routing_key"] = envelope.routing_key
            span = self.tracer.start_span(
                f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes
            )
            propagate.inject(envelope.headers, context=trace.set_span_in_context(span))
            spans.append((span, destination))

        def done(exc: BaseException | None) -> None:
            duration = time.perf_counter() - started
            for span, destination in spans:
                metric = {
                    "messaging.system": system,
                    "messaging.operation.name": "publish",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": destination,
                }
                if exc is not None:
                    metric["error.type"] = type(exc).__qualname__
                    _fail(span, exc)
                span.end()
                self.operation_duration.record(duration, metric)
                if exc is None:
                    self.sent.add(1, metric)

        return done

    # --- process ---------------------------------------------------------------------------------------

    def process_start(self, connection: Any, queue: str, message: Any) -> _observe.Done:
        system = _observe.messaging_system(connection)
        carried = propagate.extract(message.headers or {}, getter=_HEADERS)
        carried_span = trace.get_current_span(carried).get_span_context()
        links = [Link(carried_span)] if carried_span.is_valid else None
        info = message.delivery_info
        attributes = _message_attributes(system, message.properties, len(message.body))
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        attributes["messaging.destination.name"] = queue
        attributes["messaging.rabbitmq.destination.routing_key"] = info.get("routing_key", "")
        if info.get("delivery_tag") is not None:
            attributes["messaging.rabbitmq.message.delivery_tag"] = info["delivery_tag"]
        span = self.tracer.start_span(
            f"process {queue}", context=carried, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        metric = {
            "messaging.system": system,
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
        }
        self.consumed.add(1, metric)
        # The callback (or loop body) runs with the process span current, so its own spans nest in it.
        token = context.attach(trace.set_span_in_context(span))
        key = id(message)
        self._queues[key] = queue
        started = time.perf_counter()

        def done(exc: BaseException | None) -> None:
            self._queues.pop(key, None)
            _detach(token)
            if exc is not None and not isinstance(exc, GeneratorExit):
                metric["error.type"] = type(exc).__qualname__
                _fail(span, exc)
            span.end()
            self.process_duration.record(time.perf_counter() - started, metric)

        return done

    # --- settle ----------------------------------------------------------------------------------------

    def settle_start(self, message: Any, outcome: str) -> _observe.Done:
        channel = message.channel
        system = _observe.messaging_system(channel.connection) if channel is not None else "unknown"
        queue = self._queues.get(id(message)) or message.delivery_info.get("routing_key", "")
        attributes: dict[str, Any] = {
            "messaging.system": system,
            "messaging.operation.type": "settle",
            "messaging.operation.name": outcome,
            "messaging.destination.name": queue,
        }
        message_id = message.properties.get("message_id")
        if message_id is not None:
            attributes["messaging.message.id"] = str(message_id)
        span = self.tracer.start_span(f"settle {queue}", kind=SpanKind.CLIENT, attributes=attributes)
        started = time.perf_counter()

        def done(exc: BaseException | None) -> None:
            metric = {
                "messaging.system": system,
                "messaging.operation.name": outcome,
                "messaging.operation.type": "settle",
                "messaging.destination.name": queue,
            }
            if exc is not None:
                metric["error.type"] = type(exc).__qualname__
                _fail(span, exc)
            span.end()
            self.operation_duration.record(time.perf_counter() - started, metric)

        return done


class _HeaderGetter(Getter[dict[str, Any]]):
    """Reads trace context from message headers, which any publisher may have filled with anything: a
    text value is used, a bytes value decoded, anything else ignored (the message starts a new trace)."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [str(key) for key in carrier]


_HEADERS = _HeaderGetter()


def _message_attributes(system: str, properties: dict[str, Any], size: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": system, "messaging.message.body.size": size}
    message_id = properties.get("message_id")
    if message_id is not None:
        attributes["messaging.message.id"] = str(message_id)
    correlation_id = properties.get("correlation_id")
    if correlation_id is not None:
        attributes["messaging.message.conversation_id"] = str(correlation_id)
    return attributes


def _fail(span: trace.Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)))


def _detach(token: object) -> None:
    # An `async for` left early is closed later, maybe from another context (the event loop's generator
    # finalizer); the context it attached to is gone then, and there is nothing to restore.
    if isinstance(token, contextvars.Token):
        try:
            token.var.reset(token)
        except ValueError:
            pass
    else:
        context.detach(token)  # type: ignore[arg-type]
