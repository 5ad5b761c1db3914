# Generated from src/kelp/aio/pidbox.py by scripts/unasync.py; do not edit.
"""Process mailboxes: send a command to every node of an application, or to named ones, and gather replies.

A :class:`Mailbox` names an application (its *namespace*). Each process that takes commands runs a
:class:`Node` of it: the node has a queue of its own, ``<hostname>.<namespace>.pidbox``, bound to the
exchange ``<namespace>.pidbox``, and runs a handler for each command it receives. A client publishes one
command to that exchange; every node receives it and runs it if the command names it (``destination``), or
matches its hostname (``pattern`` with ``matcher`` ``'glob'`` or ``'pcre'``), or names no one.

``cast`` and ``abcast`` send without waiting; ``call`` and ``multi_call`` also send the address of a reply
queue of the client's own, ``<oid>.reply.<namespace>.pidbox`` on the exchange ``reply.<namespace>.pidbox``,
and gather the ``{hostname: result}`` replies until ``limit`` of them arrived or no reply came for
``timeout`` seconds. Command and reply queues are exclusive and auto-deleted by default (the reply queue
also expires after ``reply_queue_expires`` seconds unused), and messages are transient: a command sent while
a node is down is not kept for it.

The messages are Kombu's (JSON bodies ``{'method', 'arguments', 'destination', 'pattern', 'matcher',
'ticket', 'reply_to'}``, headers ``clock``, ``expires`` and ``ticket``), so a kelp node answers a Kombu
client on the same broker, and the other way around.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from kelp._backend import maybe_await
from kelp._pidbox_node import MATCHERS, Handler, Node, clock_of
from kelp.clocks import LamportClock
from kelp.connection import Channel, Connection
from kelp.entity import Exchange, Queue
from kelp.exceptions import UsageError
from kelp.message import Message
from kelp.messaging import Consumer, Producer, maybe_declare

__all__ = ["Mailbox", "Node"]

#: Seconds an unused reply queue lives on the broker (Kombu's default).
REPLY_QUEUE_EXPIRES = 10.0


class Mailbox:
    """The mailbox of the application ``namespace``: nodes receive its commands, clients send them.

    ``type`` is the command exchange's type (``'direct'``, or ``'fanout'``). Bind a mailbox to a
    connection by calling it (``mailbox(conn)`` returns a bound copy) or by passing ``connection``.
    ``queue_ttl``/``queue_expires`` (seconds) apply to nodes' queues, ``reply_queue_ttl``/
    ``reply_queue_expires`` to the reply queue; ``accept`` lists the content types a node or client
    decodes (JSON only by default). ``producer_pool`` (a pool, or a callable returning one) supplies
    producers instead of a new one per message.
    """

    node_cls: type[Node] = Node
    exchange_fmt = "%s.pidbox"
    reply_exchange_fmt = "reply.%s.pidbox"
    #: The content types decoded by default.
    accept: Sequence[str] = ["json"]
    serializer: str | None = None

    def __init__(
        self,
        namespace: str,
        type: str = "direct",
        connection: Connection | None = None,
        clock: LamportClock | None = None,
        accept: Sequence[str] | None = None,
        serializer: str | None = None,
        producer_pool: Any = None,
        queue_ttl: float | None = None,
        queue_expires: float | None = None,
        queue_durable: bool = False,
        queue_exclusive: bool = True,
        reply_queue_ttl: float | None = None,
        reply_queue_expires: float | None = REPLY_QUEUE_EXPIRES,
    ) -> None:
        if queue_exclusive and queue_durable:
            raise UsageError("a mailbox's queues cannot be both exclusive and durable")
        self.namespace = namespace
        self.connection = connection
        self.type = type
        self.clock = LamportClock() if clock is None else clock
        self.exchange = self._get_exchange(namespace, type)
        self.reply_exchange = self._get_reply_exchange(namespace)
        #: Replies received for other calls than the one collecting, by ticket.
        self.unclaimed: defaultdict[str, deque[Any]] = defaultdict(deque)
        if accept is not None:
            self.accept = accept
        if serializer is not None:
            self.serializer = serializer
        self.queue_ttl = queue_ttl
        self.queue_expires = queue_expires
        self.queue_durable = queue_durable
        self.queue_exclusive = queue_exclusive
        self.reply_queue_ttl = reply_queue_ttl
        self.reply_queue_expires = reply_queue_expires
        self._producer_pool = producer_pool
        self._oid: str | None = None
        self._reply_queue: Queue | None = None

    def __repr__(self) -> str:
        return f"<Mailbox: {self.namespace!r} ({self.type})>"

    def __call__(self, connection: Connection) -> Mailbox:
        """A copy of this mailbox bound to ``connection`` (with its own reply queue)."""
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.connection = connection
        bound._oid = None
        bound._reply_queue = None
        return bound

    def Node(
        self,
        hostname: str | None = None,
        state: Any = None,
        channel: Channel | Connection | None = None,
        handlers: dict[str, Handler] | None = None,
    ) -> Node:
        """A node of this mailbox named ``hostname`` (default: this machine's host name)."""
        return self.node_cls(hostname or socket.gethostname(), state, channel, handlers, mailbox=self)

    # --- sending --------------------------------------------------------------------------------------

    def call(
        self,
        destination: Sequence[str],
        command: str,
        kwargs: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        callback: Callable[[Any], Any] | None = None,
        channel: Channel | None = None,
    ) -> list[Any] | None:
        """Run ``command`` on the named nodes; return their replies (one per node, at most).

        Waits for as many replies as destinations, or until none came for ``timeout`` seconds
        (None: waits as long as it takes).
        """
        return self._broadcast(
            command,
            kwargs or {},
            destination,
            reply=True,
            timeout=timeout,
            callback=callback,
            channel=channel,
        )

    def cast(self, destination: Sequence[str], command: str, kwargs: Mapping[str, Any] | None = None) -> None:
        """Send ``command`` to the named nodes without waiting for anything."""
        self._broadcast(command, kwargs or {}, destination, reply=False)

    def abcast(self, command: str, kwargs: Mapping[str, Any] | None = None) -> None:
        """Send ``command`` to every node without waiting for anything."""
        self._broadcast(command, kwargs or {}, reply=False)

    def multi_call(
        self,
        command: str,
        kwargs: Mapping[str, Any] | None = None,
        timeout: float | None = 1,
        limit: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        channel: Channel | None = None,
    ) -> list[Any] | None:
        """Run ``command`` on every node; return the replies that came before none came for ``timeout``
        seconds (or once ``limit`` came)."""
        return self._broadcast(
            command,
            kwargs or {},
            reply=True,
            timeout=timeout,
            limit=limit,
            callback=callback,
            channel=channel,
        )

    # --- entities -------------------------------------------------------------------------------------

    @property
    def oid(self) -> str:
        """This mailbox object's id: the routing key of its replies."""
        if self._oid is None:
            self._oid = str(uuid.uuid4())
        return self._oid

    def get_reply_queue(self) -> Queue:
        oid = self.oid
        return Queue(
            f"{oid}.{self.reply_exchange.name}",
            exchange=self.reply_exchange,
            routing_key=oid,
            durable=self.queue_durable,
            exclusive=self.queue_exclusive,
            auto_delete=not self.queue_durable,
            expires=self.reply_queue_expires,
            message_ttl=self.reply_queue_ttl,
        )

    @property
    def reply_queue(self) -> Queue:
        """The queue this mailbox's replies arrive on (made once per mailbox object)."""
        if self._reply_queue is None:
            self._reply_queue = self.get_reply_queue()
        return self._reply_queue

    def get_queue(self, hostname: str) -> Queue:
        """The command queue of the node ``hostname``."""
        return Queue(
            f"{hostname}.{self.namespace}.pidbox",
            exchange=self.exchange,
            durable=self.queue_durable,
            exclusive=self.queue_exclusive,
            auto_delete=not self.queue_durable,
            expires=self.queue_expires,
            message_ttl=self.queue_ttl,
        )

    def _get_exchange(self, namespace: str, type: str) -> Exchange:
        return Exchange(self.exchange_fmt % namespace, type=type, durable=False, delivery_mode="transient")

    def _get_reply_exchange(self, namespace: str) -> Exchange:
        return Exchange(
            self.reply_exchange_fmt % namespace, type="direct", durable=False, delivery_mode="transient"
        )

    @property
    def producer_pool(self) -> Any:
        pool = self._producer_pool
        return pool() if callable(pool) else pool

    def _default_channel(self, channel: Channel | Connection | None) -> Channel | Connection:
        chosen = channel or self.connection
        if chosen is None:
            raise UsageError(f"{self!r} is not bound to a connection: use mailbox(connection)")
        return chosen

    @contextmanager
    def producer_or_acquire(
        self, producer: Producer | None = None, channel: Channel | Connection | None = None
    ) -> Iterator[Producer]:
        """``producer``, else one from the producer pool (released after), else a new one on ``channel``."""
        if producer is not None:
            yield producer
            return
        pool = self.producer_pool
        if pool is not None:
            pooled = pool.acquire(block=True)
            try:
                yield pooled
            finally:
                pooled.release()
            return
        yield Producer(self._default_channel(channel), auto_declare=False)

    def _publish_reply(
        self,
        reply: Any,
        exchange: str,
        routing_key: str,
        ticket: str | None,
        channel: Channel | Connection | None = None,
        producer: Producer | None = None,
        **opts: Any,
    ) -> None:
        target = Exchange(exchange, type="direct", delivery_mode="transient", durable=False)
        with self.producer_or_acquire(producer, channel) as chosen:
            chosen.publish(
                reply,
                exchange=target,
                routing_key=routing_key,
                declare=[target],
                headers={"ticket": ticket, "clock": self.clock.forward()},
                retry=True,
                **opts,
            )

    def _publish(
        self,
        type: str,
        arguments: Mapping[str, Any],
        destination: Sequence[str] | None = None,
        reply_ticket: str | None = None,
        channel: Channel | Connection | None = None,
        timeout: float | None = None,
        serializer: str | None = None,
        producer: Producer | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        message: dict[str, Any] = {
            "method": type,
            "arguments": dict(arguments),
            "destination": list(destination) if destination is not None else None,
            "pattern": pattern,
            "matcher": matcher,
        }
        target = self._default_channel(channel)
        if reply_ticket:
            maybe_declare(self.reply_queue, target)
            message["ticket"] = reply_ticket
            message["reply_to"] = {"exchange": self.reply_exchange.name, "routing_key": self.oid}
        with self.producer_or_acquire(producer, target) as chosen:
            chosen.publish(
                message,
                exchange=self.exchange.name,
                declare=[self.exchange],
                headers={"clock": self.clock.forward(), "expires": time.time() + timeout if timeout else 0},
                serializer=serializer or self.serializer,
                retry=True,
            )

    def _broadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float | None = 1,
        limit: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        channel: Channel | Connection | None = None,
        serializer: str | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> list[Any] | None:
        if destination is not None and not isinstance(destination, (list, tuple)):
            raise UsageError(f"destination must be a list or tuple of node names, not {type(destination)}")
        if pattern is not None and not isinstance(pattern, str):
            raise UsageError(f"pattern must be a string, not {type(pattern)}")
        if matcher is not None and matcher not in MATCHERS:
            raise UsageError(f"unknown matcher {matcher!r}; known: {sorted(MATCHERS)}")
        ticket = str(uuid.uuid4()) if reply else None
        target = self._default_channel(channel)
        if limit is None and destination:
            limit = len(destination)
        self._publish(
            command,
            arguments or {},
            destination=destination,
            reply_ticket=ticket,
            channel=target,
            timeout=timeout,
            serializer=serializer,
            pattern=pattern,
            matcher=matcher,
        )
        if ticket is None:
            return None
        return self._collect(ticket, limit=limit, timeout=timeout, callback=callback, channel=target)

    def _collect(
        self,
        ticket: str,
        limit: int | None = None,
        timeout: float | None = 1,
        callback: Callable[[Any], Any] | None = None,
        channel: Channel | Connection | None = None,
        accept: Sequence[str] | None = None,
    ) -> list[Any]:
        """Gather the replies carrying ``ticket``: until ``limit`` arrived or none came for ``timeout``
        seconds. Replies to other calls of this mailbox are kept for them (``unclaimed``); replies past
        their ``expires`` header are dropped."""
        if ticket in self.unclaimed:
            return list(self.unclaimed.pop(ticket))
        target = self._default_channel(channel)
        connection = target if isinstance(target, Connection) else target.connection
        responses: list[Any] = []

        def on_message(body: Any, message: Message) -> None:
            self.clock.adjust(clock_of(message))
            expires = message.headers.get("expires")
            if expires and time.time() > expires:
                return
            this_ticket = message.headers.get("ticket", ticket)
            if this_ticket != ticket:
                self.unclaimed[this_ticket].append(body)
                return
            if callback is not None:
                maybe_await(callback(body))
            responses.append(body)

        consumer = Consumer(
            target, [self.reply_queue], accept=self.accept if accept is None else accept, no_ack=True
        )
        consumer.register_callback(on_message)
        with consumer:
            while limit is None or len(responses) < limit:
                try:
                    connection.drain_events(timeout=timeout)
                except TimeoutError:
                    break
        return responses
