"""Helpers for the usual patterns: broadcast queues, request/reply, loops over messages, retrying.

* :class:`Broadcast` — a queue of its own on a fanout exchange: every instance receives every message.
* :func:`itermessages`, :func:`drain_consumer`, :func:`eventloop` — loops over ``drain_events``.
* :func:`send_reply` / :func:`collect_replies` — the two halves of request/reply over ``reply_to`` and
  ``correlation_id``.
* :func:`ignore_errors`, :func:`insured` — cleanup that may fail, work that must survive reconnects.

The generators here are async generators (``async for``) in the asyncio API, plain ones in the sync API.
Leaving one early gives back (requeues) the messages it received but did not yield; with asyncio that
happens when the generator is closed (``contextlib.aclosing``) or garbage-collected.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as _uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kelp.aio._backend import maybe_await
from kelp.aio.connection import Channel, Connection
from kelp.aio.message import Message
from kelp.aio.messaging import Consumer, Producer, maybe_declare
from kelp.entity import Exchange, Queue
from kelp.exceptions import UsageError
from kelp.serialization import registry as serializers

if TYPE_CHECKING:
    from kelp.aio.pools import ConnectionPool

__all__ = [
    "Broadcast",
    "collect_replies",
    "declaration_cached",
    "drain_consumer",
    "eventloop",
    "ignore_errors",
    "insured",
    "itermessages",
    "maybe_declare",
    "send_reply",
    "uuid",
]

logger = logging.getLogger("kelp.common")

Callback = Callable[[Any, Message], Any]


def uuid() -> str:
    """A new random UUID as text (``'0f8fad5b-d9cb-469f-a165-70867728950e'``)."""
    return str(_uuid.uuid4())


class Broadcast(Queue):
    """A queue bound to the fanout exchange ``name``: each instance gets its own copy of every message.

    The queue is named ``bcast.<uuid>`` unless ``queue`` names it (``unique=True`` appends a uuid to that
    name too); it is ``auto_delete`` by default, so it goes away with its last consumer, and with it the
    messages it held. ``exchange`` replaces the fanout exchange named ``name``; ``kwargs`` are
    :class:`Queue`'s.
    """

    def __init__(
        self,
        name: str | None = None,
        queue: str | None = None,
        unique: bool = False,
        auto_delete: bool = True,
        exchange: Exchange | str | None = None,
        alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        queue_name = f"{queue or 'bcast'}.{uuid()}" if unique else (queue or f"bcast.{uuid()}")
        if exchange is None:
            if not name:
                raise UsageError("Broadcast needs the name of its fanout exchange (or an exchange)")
            exchange = Exchange(name, type="fanout")
        elif isinstance(exchange, str):
            exchange = Exchange(exchange, type="fanout")
        super().__init__(queue_name, exchange, alias=alias or name, auto_delete=auto_delete, **kwargs)
        #: The queue's name, generated or given (Kombu's attribute).
        self.queue = queue_name


def declaration_cached(entity: Exchange | Queue, channel: Channel | Connection) -> bool:
    """Whether :func:`maybe_declare` already declared ``entity`` on this channel's connection."""
    connection = channel if isinstance(channel, Connection) else channel.connection
    return entity in connection.declared_entities


async def eventloop(
    conn: Connection, limit: int | None = None, timeout: float | None = None, ignore_timeouts: bool = False
) -> AsyncIterator[None]:
    """Call ``conn.drain_events(timeout)`` ``limit`` times (None: forever), yielding after each that
    dispatched something. A wait that times out raises ``socket.timeout``, unless ``ignore_timeouts``:
    then it counts as one of the ``limit`` rounds and the loop goes on."""
    rounds = 0
    while not limit or rounds < limit:
        rounds += 1
        try:
            await conn.drain_events(timeout=timeout)
        except TimeoutError:
            if timeout and not ignore_timeouts:
                raise
            continue
        yield None


async def drain_consumer(
    consumer: Consumer,
    limit: int | None = 1,
    timeout: float | None = None,
    callbacks: Sequence[Callback] | None = None,
) -> AsyncIterator[tuple[Any, Message]]:
    """Consume with ``consumer`` and yield ``(body, message)`` pairs, at most one per round.

    A round yields a message already received, or else waits up to ``timeout`` seconds (None: forever)
    for deliveries; a round whose wait times out yields nothing. There are ``limit`` rounds (None:
    unlimited). The consumer's callbacks are replaced by one that collects messages, followed by
    ``callbacks``. Yielded messages are the caller's to settle (unless the consumer is ``no_ack``); on
    exit the consumer is cancelled and the messages received but not yielded are requeued.
    """
    received: deque[tuple[Any, Message]] = deque()

    def collect(body: Any, message: Message) -> None:
        received.append((body, message))

    consumer.callbacks = [collect, *(callbacks or ())]
    try:
        async with consumer:
            rounds = 0
            while not limit or rounds < limit:
                rounds += 1
                if not received:
                    try:
                        await consumer.connection.drain_events(timeout=timeout)
                    except TimeoutError:
                        continue
                if received:
                    yield received.popleft()
    finally:
        connection = consumer.connection
        while received:  # last first: a requeued message goes to the head of its queue
            _, message = received.pop()
            if not message.acknowledged:
                await ignore_errors(connection, message.requeue)


def itermessages(
    conn: Connection,
    channel: Channel | None,
    queue: Queue,
    limit: int | None = 1,
    timeout: float | None = None,
    callbacks: Sequence[Callback] | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[Any, Message]]:
    """Yield ``(body, message)`` from ``queue`` (see :func:`drain_consumer` for ``limit``/``timeout``);
    ``kwargs`` go to the :class:`Consumer` (``no_ack``, ``accept``...)."""
    return drain_consumer(
        conn.Consumer(queues=[queue], channel=channel, **kwargs),
        limit=limit,
        timeout=timeout,
        callbacks=callbacks,
    )


async def send_reply(
    exchange: Exchange | str | None,
    req: Message,
    msg: Any,
    producer: Producer | None = None,
    retry: bool = False,
    retry_policy: Mapping[str, Any] | None = None,
    **props: Any,
) -> None:
    """Publish ``msg`` as the reply to the request message ``req``.

    It goes to ``req.properties['reply_to']`` as routing key, through ``exchange`` (``''``: the default
    exchange, which routes straight to the queue of that name), with the request's ``correlation_id``
    and its serializer. ``producer`` defaults to one on the request's channel. ``props`` override any
    of these and add properties. Returns once the broker stored the reply; it does not settle ``req``.
    """
    reply_to = req.properties.get("reply_to")
    if not reply_to:
        raise UsageError("the request has no reply_to property: there is nowhere to send a reply")
    if producer is None:
        if req.channel is None:
            raise UsageError("send_reply needs a producer: the request has no channel")
        producer = Producer(req.channel)
    options: dict[str, Any] = {
        "routing_key": reply_to,
        "correlation_id": req.properties.get("correlation_id"),
        "serializer": serializers.type_to_name.get(req.content_type or ""),
    }
    options.update(props)
    await producer.publish(msg, exchange=exchange, retry=retry, retry_policy=retry_policy, **options)


async def collect_replies(
    conn: Connection, channel: Channel | None, queue: Queue, *args: Any, **kwargs: Any
) -> AsyncIterator[Any]:
    """Yield the decoded bodies of replies arriving on ``queue`` (arguments as :func:`itermessages`).

    ``no_ack`` defaults to True here; with ``no_ack=False`` each reply is acked before it is yielded.
    """
    no_ack = kwargs.setdefault("no_ack", True)
    async for body, message in itermessages(conn, channel, queue, *args, **kwargs):
        if not no_ack:
            await message.ack()
        yield body


@contextlib.contextmanager
def _ignoring(conn: Any) -> Generator[None, None, None]:
    try:
        yield
    except conn.connection_errors + conn.channel_errors:
        logger.debug("ignored a connection or channel error", exc_info=True)


def ignore_errors(conn: Any, fun: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
    """Call ``fun(*args, **kwargs)`` ignoring connection and channel errors (returning None on one).

    ``conn`` is a connection, or anything with ``connection_errors`` and ``channel_errors``. Without
    ``fun``, return a (plain ``with``) context manager that ignores them. In the asyncio API the call form
    returns an awaitable and ``fun`` may be ``async``. Meant for cleanup, where the error is moot.
    """
    if fun is None:
        return _ignoring(conn)
    return _call_ignoring(conn, fun, *args, **kwargs)


async def _call_ignoring(conn: Any, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with _ignoring(conn):
        return await maybe_await(fun(*args, **kwargs))


def _ensure_errback(exc: BaseException, interval: float) -> None:
    logger.error("connection error: %r; retrying in %.1fs", exc, interval, exc_info=True)


async def insured(
    pool: ConnectionPool,
    fun: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    errback: Callable[[BaseException, float], Any] | None = None,
    on_revive: Callable[[Channel], Any] | None = None,
    **opts: Any,
) -> Any:
    """Call ``fun(*args, connection=conn, **kwargs)`` with a connection from ``pool``, retrying it after
    reconnecting when a connection error interrupts it (see :meth:`Connection.ensure`; ``opts`` are its
    options). Blocks until a pooled connection is free and the broker reachable; returns what ``fun``
    returns. The connection goes back to the pool afterwards. A retried ``fun`` may run twice.
    """
    errback = errback or _ensure_errback
    conn = await pool.acquire(block=True)
    try:
        await conn.ensure_connection(errback=errback)
        call = conn.ensure(conn, fun, errback=errback, on_revive=on_revive, **opts)
        return await call(*args, **{**kwargs, "connection": conn})
    finally:
        await conn.release()
