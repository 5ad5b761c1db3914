"""Publishes a process routed and encoded but has not stored yet (group commit), in publish order.

A message is routed when it is buffered (the broker routes on arrival) against the process's topology
snapshot. Most become *ready rows*: one ``messages`` row per target queue, nothing left to decide, stored
as they are if the topology is unchanged at commit. The others (a TTL, a queue with a priority or a bound
to apply) stay *items*, stored through :func:`kelp._broker.sqlite._ops.enqueue` under the queues' rules as
they are at commit. Either way a queue deleted meanwhile gets nothing.

Rows are tuples of plain values (which Python's garbage collector stops tracking), so a buffer of
thousands of messages costs the publishing thread little collection work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from kelp._broker.queue_args import expiration_ms
from kelp._broker.sqlite import _ops
from kelp._broker.sqlite._codec import decode, encode
from kelp._broker.sqlite._topology import Topology
from kelp._envelope import Envelope

__all__ = ["PublishBuffer", "Segment", "queues", "stage", "store"]

logger = logging.getLogger("kelp.transport.sqlite")

# A run of buffered publishes of one kind: (topology version, ready, entries). Entries are rows when
# ``ready`` (the columns of _ops._COLUMNS), else items (envelope, properties text, headers text,
# persistent, TTL in ms, publish time, target queues).
Segment = tuple[int, bool, list[Any]]
Item = tuple[Envelope, str, str, bool, int | None, float, list[str]]

_queue_of = itemgetter(0)


def stage(topo: Topology, envelopes: Sequence[Envelope], now: float) -> list[tuple[bool, Any]] | None:
    """Route and encode envelopes for the buffer: ``(True, row)`` or ``(False, item)`` each, in order.

    None when one needs an answer from the broker now: mandatory, an exchange this process does not know,
    or a queue that may refuse it (``x-overflow: reject-publish``).
    """
    exchanges = topo.exchanges
    staged: list[tuple[bool, Any]] = []
    for envelope in envelopes:
        exchange = envelope.exchange
        if envelope.mandatory or (exchange and exchange not in exchanges):
            return None
        routing_key = envelope.routing_key
        headers = envelope.headers
        targets, plain = topo.routed(exchange, routing_key, headers)
        if plain is None:
            return None
        properties = envelope.properties
        props = encode(properties)
        headers_text = encode(headers) if headers else ""
        persistent = properties.get("delivery_mode") == 2
        if plain and "expiration" not in properties:
            body = _ops.blob(envelope.body)
            flag = 1 if persistent else 0
            for name in targets:
                staged.append((True, (name, 0, body, props, headers_text, exchange, routing_key, flag)))
        else:
            ttl = expiration_ms(properties) if "expiration" in properties else None
            staged.append((False, (envelope, props, headers_text, persistent, ttl, now, targets)))
    return staged


class PublishBuffer:
    """The buffered publishes as segments. Not thread-safe: the store calls it under its buffer lock."""

    __slots__ = ("count", "segments")

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.count = 0  # rows and items

    def push(self, version: int, staged: list[tuple[bool, Any]]) -> None:
        segments = self.segments
        for ready, entry in staged:
            if segments:
                tail = segments[-1]
                if tail[0] == version and tail[1] == ready:
                    tail[2].append(entry)
                    continue
            segments.append((version, ready, [entry]))
        self.count += len(staged)

    def take(self) -> list[Segment]:
        segments, self.segments = self.segments, []
        self.count = 0
        return segments

    def restore(self, segments: list[Segment]) -> None:
        """Put back segments taken by a transaction that did not commit, before anything buffered since."""
        if segments:
            self.segments[:0] = segments
            self.count += sum(len(entries) for _, _, entries in segments)


def queues(staged: list[tuple[bool, Any]]) -> set[str]:
    """The queues staged publishes go to."""
    names: set[str] = set()
    for ready, entry in staged:
        if ready:
            names.add(entry[0])
        else:
            names.update(entry[6])
    return names


def store(tx: _ops.Tx, segments: list[Segment]) -> None:
    """Add the buffered publishes to the transaction (rows are inserted by ``tx.flush_rows``)."""
    topo = tx.topo
    for version, ready, entries in segments:
        if ready and version == topo.version:
            tx.rows += entries
            tx.touched.update(map(_queue_of, entries))
        elif ready:
            for row in entries:
                _store_stale_row(tx, row)
        else:
            for item in entries:
                _store_item(tx, item)


def _store_stale_row(tx: _ops.Tx, row: tuple[Any, ...]) -> None:
    """A ready row routed against an older topology: its queue's rules may have changed."""
    name, _priority, body, props, headers, exchange, routing_key, persistent = row
    queue = tx.topo.queues.get(name)
    if queue is None:
        return
    args = queue.args
    if not (args.bounded or args.max_priority or args.message_ttl is not None):
        tx.rows.append(row)
        tx.touched.add(name)
        return
    envelope = Envelope(bytes(body), decode(props), decode(headers), exchange, routing_key)
    _store_item(tx, (envelope, props, headers, bool(persistent), None, tx.now, [name]))


def _store_item(tx: _ops.Tx, item: Item) -> None:
    envelope, props, headers, persistent, ttl, published, targets = item
    for name in targets:
        if not _ops.enqueue(tx, name, envelope, props, headers, persistent, ttl, published):
            logger.warning(
                "kelp: queue %r refused a buffered message (x-overflow); without confirms it is dropped, "
                "as RabbitMQ does",
                name,
            )
