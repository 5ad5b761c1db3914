"""For :mod:`kelp.cli`: what each command does (``cmd_<name>(args)`` returns the exit status), and how
``kelp consume`` prints a message. A failure to report is a :class:`CommandError`; kelp's own exceptions
reach :func:`kelp.cli.main`, which turns every one into an exit status."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from kelp import Connection, Consumer, Exchange, Message, Producer, Queue, binding
from kelp._demo import Demo
from kelp.exceptions import ContentDisallowed, DecodeError
from kelp.transport.base import Transport

__all__ = [
    "WAIT",
    "CommandError",
    "cmd_bench",
    "cmd_bindings",
    "cmd_consume",
    "cmd_declare",
    "cmd_delete",
    "cmd_demo",
    "cmd_publish",
    "cmd_purge",
    "cmd_queues",
    "cmd_serve",
    "message_record",
    "one_line",
]

#: Every wait in the demo and in ``bench`` is bounded by this many seconds.
WAIT = 5.0


class CommandError(Exception):
    """A failure the command reports as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- helpers ------------------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Connection:
    """A connection to ``--url`` (connected by its ``with`` block)."""
    return Connection(args.url)


def _transport(connection: Connection) -> Transport:
    transport = connection.transport
    if transport is None:  # pragma: no cover - connect() sets it or raises
        raise CommandError("not connected")
    return transport


@contextlib.contextmanager
def _iterating(consumer: Consumer, limit: int | None, timeout: float | None) -> Iterator[Iterator[Message]]:
    """``consumer.iterate(...)``, closed on exit so that messages it buffered go back to their queue."""
    messages = consumer.iterate(limit=limit, timeout=timeout)
    try:
        yield messages
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()


def _printable_body(message: Message) -> tuple[Any, str | None, str | None]:
    """The body as JSON can show it, ``'base64'`` when it had to be encoded, and why it could not be
    decoded (a corrupt body or compression; not a content type the accept list refuses). Never unpickles."""
    error = None
    try:
        body: Any = message.decode()
    except ContentDisallowed:
        body = message.body
    except DecodeError as exc:
        body, error = message.body, f"cannot decode the body: {one_line(exc)}"
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8"), None, error
        except UnicodeDecodeError:
            return base64.b64encode(body).decode("ascii"), "base64", error
    return body, None, error


def message_record(message: Message) -> dict[str, Any]:
    """What ``kelp consume`` prints for one message (as one JSON line); ``error`` marks a body that could
    not be decoded, which is then shown as it travelled."""
    body, encoding, error = _printable_body(message)
    record: dict[str, Any] = {
        "body": body,
        "headers": message.headers,
        "properties": message.properties,
        "delivery_info": message.delivery_info,
    }
    if encoding is not None:
        record["body_encoding"] = encoding
    if error is not None:
        record["error"] = error
    return record


def _json_line(record: dict[str, Any]) -> str:
    line = json.dumps(record, default=str, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # text a foreign producer sent as bytes that are not UTF-8 (lone surrogates)
        line = json.dumps(record, default=str)
    return line


# --- publish / consume --------------------------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    text: str = sys.stdin.read() if args.body == "-" else args.body
    body: Any = text
    if args.serializer is not None:
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"with --serializer the body must be JSON: {exc}", 2) from None
    returned: list[str] = []
    with _connect(args) as connection:
        producer = Producer(
            connection,
            auto_declare=False,
            on_return=lambda exc, exchange, key, message: returned.append(str(exc)),
        )
        message_id = producer.publish(
            body,
            exchange=args.exchange,
            routing_key=args.routing_key,
            headers=dict(args.header),
            delivery_mode=args.delivery_mode,
            content_type=args.content_type,
            serializer=args.serializer,
            mandatory=True,
            countdown=args.delay,
        )
    for reason in returned:
        print(f"kelp: warning: {reason}; it was dropped", file=sys.stderr)
    where = f"exchange {args.exchange!r}" if args.exchange else "the default exchange"
    print(f"published to {where} with routing key {args.routing_key!r} ({args.delivery_mode})")
    if args.delay:
        print(f"  delayed {args.delay:g} s; message id {message_id} (cancels it)")
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1", 2)
    received = 0
    with _connect(args) as connection:
        connection.default_channel.queue_declare(args.queue, passive=True)  # NotFound when missing
        queue = Queue(args.queue, no_declare=True)
        consumer = Consumer(connection, [queue], auto_declare=False, prefetch_count=args.count or 100)
        with _iterating(consumer, args.count, args.timeout) as messages:
            try:
                for message in messages:
                    if args.no_ack:
                        message.ack()
                    print(_json_line(message_record(message)), flush=True)
                    if not args.no_ack:
                        message.ack()
                    received += 1
            except TimeoutError:
                if args.count is not None:
                    raise CommandError(
                        f"no message for {args.timeout:g}s: received {received} of {args.count}"
                    ) from None
    return 0


# --- declare / inspect / delete -----------------------------------------------------------------------


def cmd_declare(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        channel = connection.default_channel
        if args.kind == "exchange":
            Exchange(args.name, args.type, durable=args.durable)(channel).declare()
            print(f"exchange {args.name!r} declared ({args.type}, {_durability(args.durable)})")
            return 0
        edges = []
        for spec in args.bind:
            exchange, _, routing_key = spec.partition(":")
            edges.append(binding(Exchange(exchange, no_declare=True), routing_key))
        queue = Queue(args.name, bindings=edges, durable=args.durable)(channel)
        name = queue.declare()
        print(f"queue {name!r} declared ({_durability(args.durable)})")
        for spec in args.bind:
            exchange, _, routing_key = spec.partition(":")
            print(f"  bound to exchange {exchange!r} with routing key {routing_key!r}")
    return 0


def _durability(durable: bool) -> str:
    return "durable" if durable else "transient"


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_queues(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        transport = _transport(connection)
        try:
            stats = transport.queue_stats()
        except NotImplementedError as exc:
            if not transport.native_routing:
                raise CommandError(str(exc)) from None
            stats = [tuple(q.values()) for q in _management(args).queues()]
    rows = [(*row[:4], getattr(row, "delayed", "-")) for row in sorted(stats)]
    _table(rows, ("name", "ready", "unacked", "consumers", "delayed"))
    return 0


def cmd_bindings(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        transport = _transport(connection)
        try:
            edges = transport.list_bindings()
        except NotImplementedError as exc:
            if not transport.native_routing:
                raise CommandError(str(exc)) from None
            edges = [tuple(b.values()) for b in _management(args).bindings()]
    rows = [
        (source or "(default)", kind, destination, key, json.dumps(arguments) if arguments else "")
        for source, kind, destination, key, arguments in sorted(edges, key=lambda edge: edge[:4])
    ]
    _table(rows, ("source", "kind", "destination", "routing_key", "arguments"))
    return 0


def _management(args: argparse.Namespace) -> Any:
    """RabbitMQ's management API, for what AMQP itself cannot list."""
    from kelp.web import Inspector

    return Inspector(args.url, os.environ.get("KELP_MANAGEMENT_URL"))


def cmd_purge(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        count = connection.default_channel.queue_purge(args.queue)
    print(f"purged {count} message{'s' if count != 1 else ''} from queue {args.queue!r}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        channel = connection.default_channel
        if args.kind == "queue":
            count = channel.queue_delete(args.name, if_unused=args.if_unused, if_empty=args.if_empty)
            print(f"queue {args.name!r} deleted ({count} message{'s' if count != 1 else ''} dropped)")
        else:
            channel.exchange_delete(args.name, if_unused=args.if_unused)
            print(f"exchange {args.name!r} deleted")
    return 0


# --- bench --------------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal (nothing when the stream is not a terminal)."""

    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.enabled = stream.isatty()
        self.step = max(1, total // 50)
        self.shown = -1

    def update(self, done: int) -> None:
        if not self.enabled or (done - self.shown < self.step and done != self.total):
            return
        self.shown = done
        filled = 30 * done // self.total
        self.stream.write(f"\r{self.label:<12} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
        if done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def cmd_bench(args: argparse.Namespace) -> int:
    if args.count < 1 or args.size < 0:
        raise CommandError("--count must be at least 1 and --size at least 0", 2)
    body = b"x" * args.size
    with _connect(args) as connection:
        queue = Queue(f"kelp.bench.{uuid.uuid4().hex[:12]}", durable=args.delivery_mode == "persistent")
        queue(connection.default_channel).declare()
        try:
            producer = Producer(connection, auto_declare=False)
            progress = _Progress("publish", args.count, sys.stderr)
            started = time.perf_counter()
            for i in range(args.count):
                producer.publish(body, routing_key=queue.name, delivery_mode=args.delivery_mode)
                progress.update(i + 1)
            published = time.perf_counter() - started

            progress = _Progress("consume+ack", args.count, sys.stderr)
            consumer = Consumer(connection, [queue], auto_declare=False, prefetch_count=args.prefetch)
            started = time.perf_counter()
            with _iterating(consumer, args.count, WAIT) as messages:
                for i, message in enumerate(messages):
                    message.ack()
                    progress.update(i + 1)
            consumed = time.perf_counter() - started
            consumer.cancel()
        finally:
            connection.default_channel.queue_delete(queue.name)
    print(f"{args.count} messages of {args.size} bytes, {args.delivery_mode}, on {connection.as_uri()}")
    for label, seconds in (("publish", published), ("consume+ack", consumed)):
        print(f"  {label:<12} {seconds:8.3f} s  {args.count / max(seconds, 1e-9):12,.0f} msg/s")
    return 0


# --- demo / serve -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    with _connect(args) as connection:
        demo = Demo(connection, args.url)
        try:
            demo.run()
        finally:
            demo.cleanup()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kelp import web

    if args.allow_write and not args.token:
        raise CommandError("--allow-write needs --token TOKEN (write requests must carry it)", 2)
    server = web.make_server(
        args.url, args.host, args.port, args.allow_write, args.token, args.management_url
    )
    where = f"http://{args.host}:{server.server_port}/"
    print(f"kelp: serving {Connection(args.url).as_uri()} on {where} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def one_line(exc: BaseException) -> str:
    """The exception's text on one line (its type's name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text
