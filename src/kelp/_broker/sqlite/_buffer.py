"""Publishes a process routed and encoded but has not stored yet (group commit), in publish order.

A message is routed when it is buffered (the broker routes on arrival) against the process's topology
snapshot. Most become *ready rows*: one ``messages`` row per target queue with nothing left to decide,
kept as a shape (queue, properties, headers, exchange, routing key, persistence: see
:data:`kelp._broker.sqlite._ops.Shape`) shared by consecutive rows, and a body. Ready rows of one shape are
stored by one statement per chunk, as they are, if the topology is unchanged at commit. The other messages
(a TTL, a queue with a priority or a bound to apply) stay *items*, stored through
:func:`kelp._broker.sqlite._ops.enqueue` under the queues' rules as they are at commit. Either way a
queue deleted meanwhile gets nothing.

The buffer keeps little per message (a body, or an item), so thousands of buffered messages cost the
publishing thread little garbage-collection work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kelp._broker.queue_args import expiration_ms
from kelp._broker.sqlite import _delayed, _ops
from kelp._broker.sqlite._codec import decode, encode
from kelp._broker.sqlite._ops import Shape
from kelp._broker.sqlite._topology import Topology
from kelp._envelope import Envelope, is_persistent

__all__ = ["PublishBuffer", "Segment", "lean_row", "queues", "stage", "store"]

# A run of buffered publishes: (topology version, shape, entries). Entries are bodies of ready rows of
# that shape, or, when the shape is None, items (envelope, properties text, headers text, persistent,
# TTL in ms, publish time, target queues).
Segment = tuple[int, Shape | None, list[Any]]
Item = tuple[Envelope, str, str, bool, int | None, float, list[str]]
Staged = list[tuple[Shape | None, Any]]


def stage(topo: Topology, envelopes: Sequence[Envelope], now: float) -> tuple[Staged, bool] | None:
    """Route and encode envelopes for the buffer: ``(shape, body)`` per ready row or ``(None, item)``,
    and whether any of them is persistent (it must then be committed before its publish returns).

    None when one needs an answer from the broker now: mandatory, an exchange this process does not know,
    or a queue that may refuse it (``x-overflow: reject-publish``).
    """
    exchanges = topo.exchanges
    staged: Staged = []
    durable = False
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
        persistent = is_persistent(properties)
        durable = durable or persistent
        if plain and "expiration" not in properties and envelope.due is None:
            body = _ops.blob(envelope.body)
            flag = 1 if persistent else 0
            for name in targets:
                staged.append(((name, 0, props, headers_text, exchange, routing_key, flag), body))
        else:
            ttl = expiration_ms(properties) if "expiration" in properties else None
            staged.append((None, (envelope, props, headers_text, persistent, ttl, now, targets)))
    return staged, durable


def lean_held_row(topo: Topology, envelope: Envelope, confirm: bool) -> _delayed.HeldRow | None:
    """The one ``delayed`` row of a delayed publish to a single queue, to be committed now (persistent,
    or ``confirm``), with the topology version; None for anything else (the general path takes it)."""
    properties = envelope.properties
    persistent = is_persistent(properties)
    if envelope.mandatory or envelope.due is None or not (persistent or confirm):
        return None
    exchange = envelope.exchange
    if exchange and exchange not in topo.exchanges:
        return None
    headers = envelope.headers
    targets, plain = topo.routed(exchange, envelope.routing_key, headers)
    if plain is None or len(targets) != 1:  # a queue that may refuse: the general path reports it
        return None
    return (
        envelope.due,
        targets[0],
        properties.get("message_id"),
        _ops.blob(envelope.body),
        encode(properties),
        encode(headers) if headers else "",
        exchange,
        envelope.routing_key,
        expiration_ms(properties) if "expiration" in properties else None,
        1 if persistent else 0,
        topo.version,
    )


def lean_row(topo: Topology, envelope: Envelope, confirm: bool) -> _ops.Row | None:
    """The one row of a publish that :func:`stage` would make a single ready row to be committed now
    (persistent, or ``confirm``), with the topology version: the usual persistent publish, without the
    staging. None for anything else (:func:`stage` then takes it)."""
    properties = envelope.properties
    if envelope.mandatory or "expiration" in properties or envelope.due is not None:
        return None
    persistent = is_persistent(properties)
    if not (persistent or confirm):
        return None
    exchange = envelope.exchange
    if exchange and exchange not in topo.exchanges:
        return None
    routing_key = envelope.routing_key
    headers = envelope.headers
    targets, plain = topo.routed(exchange, routing_key, headers)
    if not plain or len(targets) != 1:
        return None
    return (
        targets[0],
        0,
        encode(properties),
        encode(headers) if headers else "",
        exchange,
        routing_key,
        1 if persistent else 0,
        _ops.blob(envelope.body),
        topo.version,
    )


def queues(staged: Staged) -> set[str]:
    """The queues staged publishes go to."""
    names: set[str] = set()
    for shape, entry in staged:
        if shape is not None:
            names.add(shape[0])
        else:
            names.update(entry[6])
    return names


class PublishBuffer:
    """The buffered publishes as segments. Not thread-safe: the store calls it under its buffer lock."""

    __slots__ = ("count", "segments")

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.count = 0  # rows and items

    def push(self, version: int, staged: Staged) -> None:
        segments = self.segments
        for shape, entry in staged:
            if segments:
                tail = segments[-1]
                if tail[0] == version and tail[1] == shape:  # the common case: the same as the last
                    tail[2].append(entry)
                    continue
                if shape is not None:  # a fanned-out row may join an earlier run of its queue
                    segment = _ops.run_for(segments, shape, at=1)
                    if segment is not None and segment[0] == version:
                        segment[2].append(entry)
                        continue
            segments.append((version, shape, [entry]))
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


def store(tx: _ops.Tx, segments: list[Segment]) -> list[tuple[Envelope, str]]:
    """Add the buffered publishes to the transaction (rows are inserted by ``tx.flush_rows``); return
    the (message, queue) pairs a queue refused (``x-overflow: reject-publish`` declared since the message
    was routed), for the store to report."""
    topo = tx.topo
    refused: list[tuple[Envelope, str]] = []
    for version, shape, entries in segments:
        if shape is None:
            for item in entries:
                _store_item(tx, item, refused)
        elif version == topo.version:
            tx.add_run(shape, entries)
            tx.touched.add(shape[0])
        else:
            for body in entries:
                _store_stale_row(tx, shape, body, refused)
    return refused


def _store_stale_row(
    tx: _ops.Tx, shape: Shape, body: bytes | bytearray, refused: list[tuple[Envelope, str]]
) -> None:
    """A ready row routed against an older topology: its queue's rules may have changed."""
    name, _priority, props, headers, exchange, routing_key, persistent = shape
    queue = tx.topo.queues.get(name)
    if queue is None:
        return
    args = queue.args
    if not (args.bounded or args.max_priority or args.message_ttl is not None):
        tx.add(shape, body)
        tx.touched.add(name)
        return
    envelope = Envelope(bytes(body), decode(props), decode(headers), exchange, routing_key)
    _store_item(tx, (envelope, props, headers, bool(persistent), None, tx.now, [name]), refused)


def _store_item(tx: _ops.Tx, item: Item, refused: list[tuple[Envelope, str]]) -> None:
    envelope, props, headers, persistent, ttl, published, targets = item
    if envelope.due is not None:
        for name in targets:
            _delayed.hold(tx, name, envelope, props, headers, persistent, ttl)
        return
    for name in targets:
        if not _ops.enqueue(tx, name, envelope, props, headers, persistent, ttl, published):
            refused.append((envelope, name))
