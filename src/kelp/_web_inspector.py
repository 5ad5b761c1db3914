"""For :mod:`kelp.web`: what the view reads from a broker and does to it (:class:`Inspector`), the rates
it computes from the queues' counters (:class:`Rates`), and how it shows a message without decoding it with
kelp's serializers (:func:`describe`)."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from kelp._envelope import Envelope
from kelp.connection import Connection
from kelp.exceptions import KelpError
from kelp.message import Message

__all__ = [
    "BROWSE_LIMIT",
    "COUNTERS",
    "RATE_WINDOW",
    "Inspector",
    "ManagementUnavailable",
    "Rates",
    "dead_letter_origin",
    "describe",
]

BROWSE_LIMIT = 20
_MAX_BODY_SHOWN = 4096
#: Seconds of counter samples a rate is computed over.
RATE_WINDOW = 5.0
#: The counters of a queue (QueueStats attributes) and the rate each one gives.
COUNTERS = (("published", "publish_rate"), ("delivered", "deliver_rate"), ("acked", "ack_rate"))


class ManagementUnavailable(KelpError):
    """RabbitMQ's management API could not be read."""


class Inspector:
    """Reads (and, when asked, changes) the broker at ``url``, through one connection of its own.

    Calls are serialized by a lock, so one inspector serves a threaded HTTP server."""

    def __init__(self, url: str, management_url: str | None = None) -> None:
        self.url = url
        self._connection = Connection(url)
        self._lock = threading.Lock()
        self.native = self._connection.transport_cls.native_routing
        if management_url is None and self.native:
            u = self._connection.url
            management_url = f"http://{u.hostname or 'localhost'}:15672"
        self.management_url = management_url
        self._rates = Rates()

    @contextmanager
    def _connected(self) -> Iterator[Connection]:
        with self._lock:
            connection = self._connection
            if not connection.connected:
                connection.connect()
            try:
                yield connection
            except (OSError, *connection.connection_errors):  # type: ignore[misc]
                connection.close()  # reconnect on the next call
                raise

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    # --- reading ---------------------------------------------------------------------------------------

    def queues(self) -> list[dict[str, Any]]:
        """Every queue: name, ready, unacked, consumers, delayed (sorted by name; delayed is None where the
        broker cannot say, as RabbitMQ)."""
        if self.native:
            return self._management_queues()
        with self._connected() as connection:
            assert connection.transport is not None
            rows = connection.transport.queue_stats()
        queues = [
            {
                "name": row[0],
                "ready": row[1],
                "unacked": row[2],
                "consumers": row[3],
                "delayed": getattr(row, "delayed", None),
                **{counter: getattr(row, counter, None) for counter, _ in COUNTERS},
            }
            for row in sorted(rows)
        ]
        self._rates.add(time.monotonic(), queues)
        return queues

    def bindings(self) -> list[dict[str, Any]]:
        """Every binding: source exchange, kind of destination, destination, routing key, arguments."""
        if self.native:
            return self._management_bindings()
        with self._connected() as connection:
            assert connection.transport is not None
            edges = connection.transport.list_bindings()
        return [
            {"source": s, "kind": k, "destination": d, "routing_key": r, "arguments": a}
            for s, k, d, r, a in sorted(edges, key=lambda edge: edge[:4])
        ]

    def browse(self, queue: str, limit: int = BROWSE_LIMIT) -> list[dict[str, Any]]:
        """Up to ``limit`` messages from the head of ``queue``, left in it (released unacked)."""
        with self._connected() as connection:
            channel = connection.channel()
            try:
                messages = _take(channel, queue, limit)
            finally:
                channel.close()  # releases every message taken, back to the queue
        return [describe(message) for message in messages]

    # --- writing ---------------------------------------------------------------------------------------

    def purge(self, queue: str) -> int:
        with self._connected() as connection:
            return connection.default_channel.queue_purge(queue)

    def requeue_dead_letters(self, queue: str, limit: int = 10_000) -> int:
        """Move up to ``limit`` dead letters of ``queue`` back to the queue they were first dead-lettered
        from; return how many moved. Messages without ``x-death`` stay in the queue."""
        moved = 0
        with self._connected() as connection:
            channel = connection.channel()
            try:
                for message in _take(channel, queue, limit):
                    origin = dead_letter_origin(message.headers)
                    if origin is None:
                        continue  # released when the channel closes
                    # The body was decompressed on receipt: it goes back uncompressed.
                    headers = {k: v for k, v in message.headers.items() if k != "compression"}
                    envelope = Envelope(message.body, dict(message.properties), headers, "", origin["queue"])
                    channel.publish_batch([envelope])
                    connection.flush()
                    message.ack()
                    moved += 1
            finally:
                channel.close()
        return moved

    # --- RabbitMQ ----------------------------------------------------------------------------------------

    def _management(self, what: str) -> list[dict[str, Any]]:
        u = self._connection.url
        vhost = quote(u.virtual_host or "/", safe="")
        request = urllib.request.Request(f"{self.management_url}/api/{what}/{vhost}")
        credentials = f"{u.userid or 'guest'}:{u.password or 'guest'}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                rows = json.load(response)
        except (OSError, ValueError) as exc:
            raise ManagementUnavailable(
                f"RabbitMQ's management API is not reachable at {self.management_url} ({exc}); "
                "enable the rabbitmq_management plugin to see queues and bindings here"
            ) from None
        if not isinstance(rows, list):
            raise ManagementUnavailable(f"RabbitMQ's management API sent no list of {what}")
        return [row for row in rows if isinstance(row, dict)]

    def _management_queues(self) -> list[dict[str, Any]]:
        return [
            {
                "name": str(row.get("name", "")),
                "ready": int(row.get("messages_ready") or 0),
                "unacked": int(row.get("messages_unacknowledged") or 0),
                "consumers": int(row.get("consumers") or 0),
                "delayed": None,
                **_management_rates(row.get("message_stats")),
            }
            for row in sorted(self._management("queues"), key=lambda row: str(row.get("name", "")))
        ]

    def _management_bindings(self) -> list[dict[str, Any]]:
        rows = [
            {
                "source": str(row.get("source", "")),
                "kind": "exchange" if row.get("destination_type") == "exchange" else "queue",
                "destination": str(row.get("destination", "")),
                "routing_key": str(row.get("routing_key", "")),
                "arguments": row.get("arguments") or {},
            }
            for row in self._management("bindings")
        ]
        return sorted(rows, key=lambda b: (b["source"], b["kind"], b["destination"], b["routing_key"]))


class Rates:
    """Recent samples of each queue's counters, and the rates they give (thread-safe)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._lock = threading.Lock()
        # queue -> [(monotonic time, (published, delivered, acked))], oldest first
        self._samples: dict[str, list[tuple[float, tuple[int | None, ...]]]] = {}

    def add(self, now: float, queues: list[dict[str, Any]]) -> None:
        """Record a sample of each queue's counters and set its ``*_rate`` keys (None: not known yet)."""
        with self._lock:
            seen = {}
            for q in queues:
                counts = tuple(q[counter] for counter, _ in COUNTERS)
                samples = self._samples.get(q["name"], [])
                if samples and any(
                    c is None or b is None or c < b for c, b in zip(counts, samples[-1][1], strict=True)
                ):
                    samples = []  # a queue deleted and declared again counts from 0
                samples.append((now, counts))
                # Drop what is older than the window, keeping one sample at least a window old (the
                # rates span the whole window once it has passed).
                while len(samples) > 2 and samples[1][0] <= now - self.window:
                    del samples[0]
                seen[q["name"]] = samples
                start, first = samples[0]
                span = now - start
                for (_, rate), old, new in zip(COUNTERS, first, counts, strict=True):
                    known = span > 0 and old is not None and new is not None
                    q[rate] = round((new - old) / span, 2) if known else None
            self._samples = seen


def _management_rates(stats: Any) -> dict[str, Any]:
    """Counters and rates from a RabbitMQ queue's ``message_stats``: absent until the queue has traffic
    (all 0 then); a rate is None where RabbitMQ keeps no rates (``rates_mode = none``)."""
    out: dict[str, Any] = {}
    for (counter, rate), key in zip(COUNTERS, ("publish", "deliver_get", "ack"), strict=True):
        if not isinstance(stats, dict):
            out[counter], out[rate] = 0, 0.0
            continue
        details = stats.get(f"{key}_details")
        out[counter] = int(stats.get(key) or 0)
        out[rate] = float(details.get("rate") or 0.0) if isinstance(details, dict) else None
    return out


def _take(channel: Any, queue: str, limit: int) -> list[Message]:
    messages = []
    for _ in range(limit):
        message = channel.basic_get(queue, no_ack=False)
        if message is None:
            break
        messages.append(message)
    return messages


def dead_letter_origin(headers: dict[str, Any] | None) -> dict[str, str] | None:
    """Where a dead letter was first dead-lettered from (``queue``, ``exchange``, ``routing_key``,
    ``reason``), read from its ``x-death`` header; None for a message that is not a dead letter."""
    deaths = (headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[-1], dict):
        return None
    first = deaths[-1]  # most recent first: the last entry is the original death
    queue = first.get("queue")
    if not isinstance(queue, str) or not queue:
        return None
    keys = first.get("routing-keys")
    return {
        "queue": queue,
        "exchange": str(first.get("exchange", "")),
        "routing_key": str(keys[0]) if isinstance(keys, list) and keys else "",
        "reason": str(first.get("reason", "")),
    }


def describe(message: Message) -> dict[str, Any]:
    """A message as JSON-safe data, its body decoded only as JSON or text, else shown as base64."""
    body = message.body
    content_type = message.content_type or ""
    kind, shown = "raw", base64.b64encode(body[:_MAX_BODY_SHOWN]).decode()
    try:
        text = body.decode(message.content_encoding or "utf-8")
    except (UnicodeDecodeError, LookupError):
        text = None
    if text is not None and not message.errors:
        if content_type.endswith("json"):
            try:
                kind, shown = "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except ValueError:
                kind, shown = "text", text
        elif _texty(content_type) and all(c.isprintable() or c.isspace() for c in text):
            kind, shown = "text", text
    origin = dead_letter_origin(message.headers)
    return {
        "delivery_tag": message.delivery_tag,
        "redelivered": message.redelivered,
        "content_type": message.content_type,
        "size": len(body),
        "body_kind": kind,
        "body": shown[:_MAX_BODY_SHOWN],
        "headers": _json_safe(message.headers),
        "properties": _json_safe(message.properties),
        "dead_letter_from": origin,
    }


def _texty(content_type: str) -> bool:
    return not content_type or content_type.startswith("text/") or content_type.endswith("octet-stream")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
