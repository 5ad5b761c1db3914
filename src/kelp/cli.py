"""The ``kelp`` command line: a guided demo, and small tools to publish, consume and inspect a broker.

``kelp [--url URL] COMMAND ...``; the URL defaults to ``$KELP_URL``, then :data:`kelp.connection.DEFAULT_URL`.
Built on the sync API only. Errors print one ``kelp: error: ...`` line on stderr and exit 2 for a usage
mistake (a bad option, URL or transport) or 1 when the broker refused or failed; Ctrl-C exits 130.

On ``memory://`` every invocation is its own process with its own broker: what one command declares or
publishes is gone when it exits. The inspection commands show the broker the command itself connected to.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

# The commands (WAIT and message_record stay importable from kelp.cli, where they were first).
from kelp._cli_commands import WAIT as WAIT
from kelp._cli_commands import (
    CommandError,
    cmd_bench,
    cmd_bindings,
    cmd_consume,
    cmd_declare,
    cmd_delete,
    cmd_demo,
    cmd_publish,
    cmd_purge,
    cmd_queues,
    cmd_serve,
    one_line,
)
from kelp._cli_commands import message_record as message_record
from kelp.connection import DEFAULT_URL
from kelp.exceptions import KelpError, UsageError
from kelp.routing import EXCHANGE_TYPES

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see '{self.prog} --help')", 2)


def build_parser() -> argparse.ArgumentParser:
    default_url = os.environ.get("KELP_URL") or DEFAULT_URL
    url_help = f"broker URL (default: $KELP_URL, else {DEFAULT_URL}; now {default_url})"
    common = _Parser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=url_help)

    parser = _Parser(prog="kelp", description="AMQP-model messaging: a demo, and tools for a broker.")
    parser.add_argument("--url", default=default_url, help=url_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    command("demo", cmd_demo, "run the request/reply, broadcast and publish/subscribe scenarios")

    sub = command("publish", cmd_publish, "publish one message")
    sub.add_argument("body", metavar="BODY", help="the message body, or - to read it from stdin")
    sub.add_argument("--exchange", default="", help="exchange name (default: the default exchange)")
    sub.add_argument("--routing-key", default="", help="routing key (for the default exchange: the queue)")
    sub.add_argument("--header", action="append", type=_key_value, default=[], metavar="KEY=VALUE")
    sub.add_argument(
        "--delay", type=float, metavar="SECONDS", help="hold the message in the broker this long first"
    )
    _mode_options(sub)
    encoding = sub.add_mutually_exclusive_group()
    encoding.add_argument("--content-type", help="send BODY as is, with this content type")
    encoding.add_argument("--serializer", help="parse BODY as JSON and encode it with this serializer")

    sub = command("consume", cmd_consume, "print a queue's messages as JSON lines (and ack them)")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument(
        "--count", type=int, metavar="N", help="stop after N messages (default: run until stopped)"
    )
    sub.add_argument(
        "--no-ack", action="store_true", help="ack each message on arrival, before printing it (at-most-once)"
    )
    sub.add_argument("--timeout", type=float, metavar="S", help="stop when no message arrives for S seconds")

    sub = command("declare", cmd_declare, "declare an exchange or a queue")
    kinds = sub.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    exchange = kinds.add_parser("exchange", parents=[common], help="declare an exchange")
    exchange.add_argument("name", metavar="NAME")
    exchange.add_argument("--type", default="direct", choices=sorted(EXCHANGE_TYPES))
    _durability_options(exchange)
    queue = kinds.add_parser("queue", parents=[common], help="declare a queue and bind it")
    queue.add_argument("name", metavar="NAME", help="queue name ('' for one named by the broker)")
    queue.add_argument("--bind", action="append", default=[], metavar="EXCHANGE:ROUTING_KEY")
    _durability_options(queue)

    command("queues", cmd_queues, "list queues: ready, unacked and consumer counts")
    command("bindings", cmd_bindings, "list bindings")
    sub = command("purge", cmd_purge, "drop a queue's ready messages")
    sub.add_argument("queue", metavar="QUEUE")
    sub = command("delete", cmd_delete, "delete a queue or an exchange")
    sub.add_argument("kind", choices=("queue", "exchange"))
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--if-unused", action="store_true")
    sub.add_argument("--if-empty", action="store_true", help="queues only")

    sub = command("serve", cmd_serve, "serve a web view of queues, bindings and dead letters")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sub.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    sub.add_argument("--allow-write", action="store_true", help="enable purge and requeue (needs --token)")
    sub.add_argument("--token", help="the token write requests must carry")
    sub.add_argument("--management-url", help="RabbitMQ management API (default: http://HOST:15672)")

    sub = command("bench", cmd_bench, "measure publish and consume+ack throughput")
    sub.add_argument("--count", type=int, default=10_000, metavar="N", help="messages (default: 10000)")
    sub.add_argument(
        "--size", type=int, default=100, metavar="BYTES", help="body size in bytes (default: 100)"
    )
    sub.add_argument(
        "--prefetch", type=int, default=1000, metavar="N", help="consumer prefetch (default: 1000)"
    )
    _mode_options(sub, default="transient")
    return parser


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _mode_options(parser: argparse.ArgumentParser, default: str = "persistent") -> None:
    group = parser.add_mutually_exclusive_group()
    for mode in ("persistent", "transient"):
        flag = " (default)" if mode == default else ""
        group.add_argument(
            f"--{mode}", dest="delivery_mode", action="store_const", const=mode, help=f"{mode}{flag}"
        )
    parser.set_defaults(delivery_mode=default)


def _durability_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--durable", dest="durable", action="store_true", help="survive a restart (default)")
    group.add_argument(
        "--transient", dest="durable", action="store_false", help="gone when the broker restarts"
    )
    parser.set_defaults(durable=True)


def _version() -> str:
    from kelp import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 failed, 2 usage, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except CommandError as exc:
        print(f"kelp: error: {one_line(exc)}", file=sys.stderr)
        return exc.status
    except UsageError as exc:
        print(f"kelp: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KelpError as exc:
        print(f"kelp: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``kelp consume q | head``); unacked messages return to their queue.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"kelp: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
