"""Prometheus metrics for kelp, both faces (``pip install kelp[prometheus]``).

    from kelp.prometheus import KelpMetrics
    metrics = KelpMetrics()              # registers in prometheus_client's default registry
    metrics.instrument()                 # counts every publish and delivery of the process
    metrics.watch_queues("sqlite:///app.db")   # queue depth gauges, read on each scrape

The counters and histograms carry FastStream's names and labels, so dashboards built for FastStream work
with ``prefix="faststream"`` (the default prefix is ``kelp``): ``{prefix}_published_messages_total{status}``,
``{prefix}_published_messages_duration_seconds``, ``{prefix}_published_messages_exceptions_total
{exception_type}``, ``{prefix}_received_messages_total``, ``{prefix}_received_messages_size_bytes``,
``{prefix}_received_messages_in_process``, ``{prefix}_received_processed_messages_total{status}``,
``{prefix}_received_processed_messages_duration_seconds`` and
``{prefix}_received_processed_messages_exceptions_total{exception_type}``; every one is labelled
``app_name`` and ``broker`` (``sqlite``, ``redis``, ``rabbitmq``...), the publish metrics ``destination``
(the exchange, ``amq.default`` for the default one) and the receive metrics ``handler`` (the queue).
A processed message's ``status`` is how its handler settled it: ``acked``, ``nacked`` (requeued),
``rejected``, ``skipped`` (left unsettled) or ``error`` (the handler raised).

:meth:`KelpMetrics.watch_queues` adds the gauges ``{prefix}_queue_messages_ready``,
``{prefix}_queue_messages_unacked``, ``{prefix}_queue_consumers`` and, where the broker counts them,
``{prefix}_queue_messages_delayed`` (label ``queue``), and the counters the broker keeps per queue
``{prefix}_queue_messages_published_total`` (copies that entered the queue),
``{prefix}_queue_messages_delivered_total`` (deliveries and gets, redeliveries included) and
``{prefix}_queue_messages_acked_total`` (on sqlite, redis and memory; a transport that cannot count them
leaves them out), read from the transport's queue statistics by a connection of their own each time
Prometheus scrapes. ``rate()`` over the counters gives the publish, deliver and ack rates.

Metrics observe and never change what happens to a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError("kelp.prometheus needs prometheus-client: pip install 'kelp[prometheus]'") from exc

from kelp import _observe
from kelp._envelope import Envelope
from kelp.exceptions import UsageError

__all__ = ["KelpMetrics", "QueueStatsCollector"]

_DEFAULT_EXCHANGE = "amq.default"
#: Message sizes, from 16 bytes to 16 MiB by powers of four.
SIZE_BUCKETS = (*(float(4**n) for n in range(2, 13)), float("inf"))
#: Message.state after the handler -> the status label.
_STATUS = {"ACK": "acked", "REQUEUED": "nacked", "REJECTED": "rejected", "RECEIVED": "skipped"}

QueueStats = Callable[[], Sequence[tuple[str, int, int, int]]]


class KelpMetrics:
    """Prometheus counters of publishes and deliveries, and gauges of queue depth.

    ``registry`` defaults to prometheus_client's default registry; ``prefix`` begins every metric name;
    ``app_name`` is the value of the ``app_name`` label.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, prefix: str = "kelp", app_name: str = "kelp"
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.prefix = prefix
        self.app_name = app_name
        reg = self.registry
        publish = ["app_name", "broker", "destination"]
        receive = ["app_name", "broker", "handler"]
        self.published = Counter(
            f"{prefix}_published_messages", "Messages published", [*publish, "status"], registry=reg
        )
        self.published_duration = Histogram(
            f"{prefix}_published_messages_duration_seconds", "Time to publish", publish, registry=reg
        )
        self.published_exceptions = Counter(
            f"{prefix}_published_messages_exceptions",
            "Publishes that raised",
            [*publish, "exception_type"],
            registry=reg,
        )
        self.received = Counter(f"{prefix}_received_messages", "Messages received", receive, registry=reg)
        self.received_size = Histogram(
            f"{prefix}_received_messages_size_bytes",
            "Size of received message bodies",
            receive,
            registry=reg,
            buckets=SIZE_BUCKETS,
        )
        self.in_process = Gauge(
            f"{prefix}_received_messages_in_process", "Messages being handled now", receive, registry=reg
        )
        self.processed = Counter(
            f"{prefix}_received_processed_messages",
            "Messages handled, by outcome",
            [*receive, "status"],
            registry=reg,
        )
        self.processed_duration = Histogram(
            f"{prefix}_received_processed_messages_duration_seconds",
            "Time to handle a message",
            receive,
            registry=reg,
        )
        self.processed_exceptions = Counter(
            f"{prefix}_received_processed_messages_exceptions",
            "Handlers that raised",
            [*receive, "exception_type"],
            registry=reg,
        )
        self._collectors: list[QueueStatsCollector] = []

    # --- switching on and off --------------------------------------------------------------------------

    def instrument(self) -> None:
        """Count every publish and delivery of every connection in the process, from now on."""
        _observe.install(self)

    def uninstrument(self) -> None:
        """Stop counting (the metrics keep their values) and stop reading queue statistics."""
        _observe.uninstall(self)
        for collector in self._collectors:
            self.registry.unregister(collector)
            collector.close()
        self._collectors.clear()

    def watch_queues(self, url: str | None = None, stats: QueueStats | None = None) -> QueueStatsCollector:
        """Export queue depth, unacked and consumer gauges, read at each scrape through a connection to
        ``url`` of their own (or from ``stats()``, which returns ``(queue, ready, unacked, consumers)``)."""
        collector = QueueStatsCollector(self.prefix, self.app_name, url=url, stats=stats)
        self.registry.register(collector)
        self._collectors.append(collector)
        return collector

    # --- the observer ----------------------------------------------------------------------------------

    def publish_start(self, connection: Any, envelopes: Sequence[Envelope]) -> _observe.Done:
        broker = _observe.messaging_system(connection)
        started = time.perf_counter()

        def done(exc: BaseException | None) -> None:
            duration = time.perf_counter() - started
            for envelope in envelopes:
                labels = (self.app_name, broker, envelope.exchange or _DEFAULT_EXCHANGE)
                self.published_duration.labels(*labels).observe(duration)
                if exc is None:
                    self.published.labels(*labels, "success").inc()
                else:
                    self.published.labels(*labels, "error").inc()
                    self.published_exceptions.labels(*labels, type(exc).__qualname__).inc()

        return done

    def process_start(self, connection: Any, queue: str, message: Any) -> _observe.Done:
        labels = (self.app_name, _observe.messaging_system(connection), queue)
        self.received.labels(*labels).inc()
        self.received_size.labels(*labels).observe(len(message.body))
        in_process = self.in_process.labels(*labels)
        in_process.inc()
        started = time.perf_counter()

        def done(exc: BaseException | None) -> None:
            in_process.dec()
            self.processed_duration.labels(*labels).observe(time.perf_counter() - started)
            if exc is not None and not isinstance(exc, GeneratorExit):
                self.processed.labels(*labels, "error").inc()
                self.processed_exceptions.labels(*labels, type(exc).__qualname__).inc()
            else:
                self.processed.labels(*labels, _STATUS.get(message.state, "skipped")).inc()

        return done

    def settle_start(self, message: Any, outcome: str) -> _observe.Done:
        return _nothing


def _nothing(exc: BaseException | None) -> None:
    return None


class QueueStatsCollector(Collector):
    """Gauges of each queue's ready and unacked messages and consumers, read when Prometheus scrapes.

    With ``url``, a sync connection of the collector's own is opened at the first scrape and reused
    (scrapes are serialized); it is reopened after an error, which the scrape then reports as missing
    gauges rather than failing.
    """

    def __init__(
        self, prefix: str, app_name: str, url: str | None = None, stats: QueueStats | None = None
    ) -> None:
        if (url is None) == (stats is None):
            raise UsageError("QueueStatsCollector needs either url or stats, not both")
        self.prefix = prefix
        self.app_name = app_name
        self._url = url
        self._stats = stats
        self._lock = threading.Lock()
        self._connection: Any = None

    def read(self) -> Sequence[tuple[str, int, int, int]]:
        """The current ``(queue, ready, unacked, consumers)`` rows."""
        if self._stats is not None:
            return self._stats()
        with self._lock:
            if self._connection is None:
                from kelp import Connection

                self._connection = Connection(self._url).connect()
            try:
                transport = self._connection.transport
                return list(transport.queue_stats())
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            rows: Iterable[tuple[str, int, int, int]] = self.read()
        except Exception:  # a broker that is down: the gauges are absent from this scrape
            return
        names = ("queue_messages_ready", "queue_messages_unacked", "queue_consumers")
        helps = ("Messages ready in the queue", "Messages delivered and not yet settled", "Consumers")
        families = [
            GaugeMetricFamily(f"{self.prefix}_{name}", text, labels=["app_name", "queue"])
            for name, text in zip(names, helps)
        ]
        delayed = GaugeMetricFamily(
            f"{self.prefix}_queue_messages_delayed",
            "Messages held until their due time",
            labels=["app_name", "queue"],
        )
        counters = [
            CounterMetricFamily(f"{self.prefix}_queue_messages_{name}", text, labels=["app_name", "queue"])
            for name, text in _COUNTERS
        ]
        counted = traffic = False
        for row in sorted(rows):
            queue, *values = row
            for family, value in zip(families, values):
                family.add_metric([self.app_name, queue], value)
            held = getattr(row, "delayed", None)  # QueueStats rows; RabbitMQ cannot count them
            if held is not None:
                delayed.add_metric([self.app_name, queue], held)
                counted = True
            for counter, (name, _) in zip(counters, _COUNTERS, strict=True):
                total = getattr(row, name, None)  # None: the transport cannot count it
                if total is not None:
                    counter.add_metric([self.app_name, queue], total)
                    traffic = True
        yield from families
        if counted:
            yield delayed
        if traffic:
            yield from counters


#: QueueStats counters -> help text of the Prometheus counter of that name.
_COUNTERS = (
    ("published", "Messages that entered the queue (routed, dead-lettered or come due)"),
    ("delivered", "Messages delivered to consumers or taken by get, redeliveries included"),
    ("acked", "Deliveries acknowledged"),
)
