# Generated from src/kelp/aio/_pidbox_node.py by scripts/unasync.py; do not edit.
"""The receiving end of :mod:`kelp.pidbox`: a :class:`Node` takes a mailbox's commands from its own
queue, runs the handler of each one addressed to it, and sends a ``call``'s reply back to the caller."""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kelp import messaging
from kelp._backend import maybe_await
from kelp.connection import Channel, Connection
from kelp.exceptions import InconsistencyError, ResourceLocked, UsageError
from kelp.message import Message
from kelp.messaging import Consumer

if TYPE_CHECKING:
    from kelp.pidbox import Mailbox

__all__ = ["MATCHERS", "Handler", "Node", "clock_of"]

logger = logging.getLogger("kelp.pidbox")

Handler = Callable[..., Any]

#: How a command's ``pattern`` selects nodes by hostname, per ``matcher``.
MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "glob": lambda hostname, pattern: fnmatch.fnmatch(hostname, pattern),
    "pcre": lambda hostname, pattern: re.match(pattern, hostname) is not None,
}


def clock_of(message: Message) -> int:
    """The Lamport clock value a message carries in its ``clock`` header (0 when absent or not a number)."""
    try:
        return int(message.headers.get("clock") or 0)
    except (TypeError, ValueError):
        return 0


def _in_use(hostname: str) -> str:
    return (
        f"a node named {hostname} already uses this mailbox: stop the other node, or give each node on the "
        "same host its own name"
    )


class Node:
    """One process's end of a :class:`Mailbox`: receives commands and runs a handler for each.

    ``handlers`` maps a command name to ``handler(state, **arguments)`` (in ``kelp`` it may be
    ``def``); a handler's result is the reply to a ``call``, and a handler that raises replies
    ``{'error': repr(exc)}``. Commands arrive only while the connection drains events, after
    :meth:`listen`; they are received without acknowledgement (``no_ack``), so a command a node was
    running when it died is not delivered again.
    """

    def __init__(
        self,
        hostname: str,
        state: Any = None,
        channel: Channel | Connection | None = None,
        handlers: dict[str, Handler] | None = None,
        mailbox: Mailbox | None = None,
    ) -> None:
        if mailbox is None:
            raise UsageError("a Node belongs to a Mailbox: make it with mailbox.Node(hostname)")
        self.hostname = hostname
        self.state = state
        self.channel = channel
        self.mailbox = mailbox
        self.handlers: dict[str, Handler] = {} if handlers is None else handlers
        self.adjust_clock = mailbox.clock.adjust

    def __repr__(self) -> str:
        return f"<Node: {self.hostname} of {self.mailbox.namespace!r}>"

    def _channel(self, channel: Channel | Connection | None) -> Channel | Connection:
        chosen = channel or self.channel or self.mailbox.connection
        if chosen is None:
            raise UsageError(f"{self!r} has no channel: pass one, or bind the mailbox to a connection")
        return chosen

    def Consumer(
        self,
        channel: Channel | Connection | None = None,
        no_ack: bool = True,
        accept: Sequence[str] | None = None,
        **options: Any,
    ) -> messaging.Consumer:
        """A consumer of this node's own queue (declared, exclusive by default)."""
        queue = self.mailbox.get_queue(self.hostname)
        try:
            return Consumer(
                self._channel(channel),
                [queue],
                no_ack=no_ack,
                accept=self.mailbox.accept if accept is None else accept,
                **options,
            )
        except ResourceLocked as exc:
            raise InconsistencyError(_in_use(self.hostname)) from exc

    def handler(self, fun: Handler) -> Handler:
        """Decorator: register ``fun`` as the handler of the command named after it."""
        self.handlers[fun.__name__] = fun
        return fun

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """A command that cannot be decoded is logged and dropped (it was received without ack)."""
        logger.error("pidbox %s cannot decode a command: %r", self.hostname, exc)

    def listen(
        self, channel: Channel | Connection | None = None, callback: Callable[..., Any] | None = None
    ) -> messaging.Consumer:
        """Start receiving commands (run as the connection drains events); return the consumer."""
        consumer = self.Consumer(
            channel=channel,
            callbacks=[callback or self.handle_message],
            on_decode_error=self.on_decode_error,
        )
        try:
            consumer.consume()
        except ResourceLocked as exc:
            raise InconsistencyError(_in_use(self.hostname)) from exc
        return consumer

    def dispatch(
        self,
        method: str,
        arguments: Mapping[str, Any] | None = None,
        reply_to: Mapping[str, str] | None = None,
        ticket: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the handler of ``method``; with ``reply_to``, send ``{hostname: result}`` there."""
        arguments = dict(arguments or {})
        logger.debug("pidbox %s received %s(%r) [reply_to:%s]", self.hostname, method, arguments, reply_to)
        try:
            handle = self.handle_call if reply_to else self.handle_cast
            reply = handle(method, arguments)
        except SystemExit:
            raise
        except Exception as exc:
            logger.exception("pidbox %s: command %r failed", self.hostname, method)
            reply = {"error": repr(exc)}
        if reply_to:
            self.reply(
                {self.hostname: reply},
                exchange=reply_to["exchange"],
                routing_key=reply_to["routing_key"],
                ticket=ticket,
            )
        return reply

    def handle(self, method: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run the handler of ``method`` with the node's state; KeyError if there is none."""
        return maybe_await(self.handlers[method](self.state, **(arguments or {})))

    def handle_call(self, method: str, arguments: Mapping[str, Any]) -> Any:
        return self.handle(method, arguments)

    def handle_cast(self, method: str, arguments: Mapping[str, Any]) -> Any:
        return self.handle(method, arguments)

    def handle_message(self, body: Mapping[str, Any], message: Message | None = None) -> Any:
        """Run a received command if it is addressed to this node; return the handler's result."""
        if message is not None:
            self.adjust_clock(clock_of(message))
        destination = body.get("destination")
        pattern = body.get("pattern")
        matcher = body.get("matcher")
        if destination:
            addressed = self.hostname in destination
        elif pattern and matcher:
            match = MATCHERS.get(matcher)
            if match is None:
                logger.error("pidbox %s: unknown matcher %r, command ignored", self.hostname, matcher)
                return None
            addressed = match(self.hostname, pattern)
        else:
            addressed = True
        if addressed:
            return self.dispatch(**body)
        return None

    dispatch_from_message = handle_message

    def reply(self, data: Any, exchange: str, routing_key: str, ticket: str | None, **kwargs: Any) -> None:
        self.mailbox._publish_reply(
            data, exchange, routing_key, ticket, channel=self.channel, serializer=self.mailbox.serializer
        )
