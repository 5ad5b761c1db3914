"""Dead-lettering from the sqlite store (expired, rejected, over a queue's limit) and reading a stored
row back into a message, inside one write transaction (:class:`~kelp._broker.sqlite._ops.Tx`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kelp._broker.malformed import Malformed, as_text, check_properties, malformed_tables
from kelp._broker.queue_args import QueueDef, dead_letter
from kelp._broker.sqlite import _ops
from kelp._broker.sqlite._codec import decode, encode
from kelp._envelope import Envelope, is_persistent


def read_row(body: Any, props: Any, headers: Any, exchange: Any, routing_key: Any) -> tuple[Any, ...]:
    """``(body, properties, headers)`` of a stored message; raises Malformed for a row kelp did not write
    (see :mod:`kelp._broker.malformed`)."""
    if type(body) is not bytes:
        if not isinstance(body, str):
            raise Malformed(f"the body is a {type(body).__name__}, not a BLOB")
        body = body.encode("utf-8", "surrogatepass")
    if type(exchange) is not str or type(routing_key) is not str:
        raise Malformed("the exchange or routing key is not text")
    properties = decode(props)
    check_properties(properties)
    return body, properties, decode(headers) if headers else {}


def dead_letter_row(
    tx: _ops.Tx,
    queue: QueueDef,
    body: Any,
    props: Any,
    headers: Any,
    exchange: Any,
    routing_key: Any,
    reason: str,
) -> None:
    """:func:`dead_letter_message` for a message as stored; a malformed one is dead-lettered as
    :mod:`kelp._broker.malformed` describes."""
    if queue.args.dead_letter_exchange is None:
        return
    try:
        body, properties, header_table = read_row(body, props, headers, exchange, routing_key)
    except Malformed as exc:
        properties, header_table = malformed_tables(str(exc), {"properties": props, "headers": headers})
        body = blob_of(body)
        exchange, routing_key = as_text(exchange), as_text(routing_key)
    dead_letter_message(tx, queue, body, properties, header_table, exchange, routing_key, reason)


def blob_of(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return as_text(value).encode()


def dead_letter_message(
    tx: _ops.Tx,
    queue: QueueDef,
    body: bytes,
    properties: Mapping[str, Any],
    headers: Mapping[str, Any],
    exchange: str,
    routing_key: str,
    reason: str,
) -> None:
    """Republish a message that left ``queue`` for ``reason`` to the queue's dead-letter exchange."""
    dlx = queue.args.dead_letter_exchange
    if dlx is None:
        return
    result = dead_letter(
        headers,
        properties,
        queue=queue.name,
        reason=reason,
        exchange=exchange,
        routing_key=routing_key,
        now=tx.now,
    )
    if result is None:
        return  # a dead-letter cycle: RabbitMQ drops the message too
    new_headers, new_properties = result
    target_key = queue.args.dead_letter_routing_key or routing_key
    topo = tx.current()
    if dlx and dlx not in topo.exchanges:
        return  # a missing dead-letter exchange drops the message, as in RabbitMQ
    targets = topo.route(dlx, target_key, new_headers)
    if not targets:
        return
    copy = Envelope(body, new_properties, new_headers, dlx, target_key)
    props, head = encode(new_properties), encode(new_headers)
    persistent = is_persistent(new_properties)
    for name in targets:
        _ops.enqueue(tx, name, copy, props, head, persistent, None, tx.now)
