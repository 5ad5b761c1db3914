"""SimpleQueue and SimpleBuffer: a ``queue.Queue``-like face on one named broker queue.

``q = conn.SimpleQueue("jobs")``; ``await q.put(body)``; ``message = await q.get(timeout=1)``;
``await message.ack()``. The queue is bound to a direct exchange of the same name with the name as routing
key (Kombu's layout), so a Kombu program and a kelp program using the same name share the queue.

``get`` consumes: the first call starts a consumer on the queue and then drains the connection, so messages
arrive in batches and wait, still unacked, in an in-process buffer until ``get`` returns them one by one.
Nothing is lost: a message that arrives while nobody is waiting stays in the buffer for the next ``get``,
and :meth:`SimpleQueue.close` gives every buffered message that was not returned back to the queue.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from kelp.aio._backend import monotonic
from kelp.aio.connection import Channel, Connection
from kelp.aio.message import Message
from kelp.aio.messaging import Consumer, Producer
from kelp.entity import Exchange, Queue

__all__ = ["Empty", "SimpleBuffer", "SimpleQueue"]

#: Raised by ``get`` when nothing arrives in time: it is :class:`queue.Empty`.
Empty = queue.Empty


class SimpleQueue:
    """A named queue used like ``queue.Queue``: :meth:`put`, :meth:`get`, :meth:`qsize`, :meth:`clear`.

    ``channel`` is a channel, or a connection whose default channel is used. ``name`` is the
    queue name (or a :class:`Queue`, used as given; a queue on the default exchange is published to by its
    name). ``queue_opts``/``exchange_opts`` are extra keyword arguments for :class:`Queue`/:class:`Exchange`,
    ``queue_args`` the queue's ``x-*`` arguments. ``no_ack`` (default False) makes the broker forget each
    message as it is delivered: nothing to ack, and nothing redelivered if the process dies.

    Messages from :meth:`get` must be settled (``ack``/``reject``/``requeue``) unless ``no_ack``; an
    unsettled message returns to the queue, flagged ``redelivered``, when the connection closes.
    One task (or thread) at a time may call :meth:`get` on a connection.
    """

    Empty: ClassVar[type[queue.Empty]] = queue.Empty

    no_ack: bool = False
    queue_opts: ClassVar[Mapping[str, Any]] = {}
    queue_args: ClassVar[Mapping[str, Any]] = {}
    exchange_opts: ClassVar[Mapping[str, Any]] = {"type": "direct"}

    def __init__(
        self,
        channel: Channel | Connection,
        name: str | Queue,
        no_ack: bool | None = None,
        queue_opts: Mapping[str, Any] | None = None,
        queue_args: Mapping[str, Any] | None = None,
        exchange_opts: Mapping[str, Any] | None = None,
        serializer: str | None = None,
        compression: str | None = None,
        accept: Any = None,
    ) -> None:
        if no_ack is None:
            no_ack = type(self).no_ack
        if isinstance(name, Queue):
            queue = name
            exchange = queue.exchange or Exchange("")
            routing_key = queue.routing_key or (queue.name if not exchange.name else "")
        else:
            exchange = Exchange(name, **{**type(self).exchange_opts, **(exchange_opts or {})})
            queue = Queue(
                name,
                exchange,
                name,
                queue_arguments={**type(self).queue_args, **(queue_args or {})},
                **{**type(self).queue_opts, **(queue_opts or {})},
            )
            routing_key = name
        self.no_ack = no_ack
        self.queue = queue
        self.buffer: deque[Message] = deque()
        self.consumer = Consumer(channel, [queue], no_ack=no_ack, accept=accept, on_message=self._receive)
        self.producer = Producer(
            channel,
            exchange,
            routing_key=routing_key,
            serializer=serializer,
            compression=compression,
        )
        self._consuming = False
        self._declared = False
        # sync-only: self._declared = self.consumer.auto_declare

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.queue.name!r}>"

    @property
    def connection(self) -> Connection:
        return self.consumer.connection

    @property
    def channel(self) -> Channel:
        return self.consumer.channel

    def _receive(self, message: Message) -> None:
        self.buffer.append(message)

    async def _declare(self) -> None:
        if not self._declared:
            await self.consumer.declare()
            self._declared = True

    async def _consume(self) -> None:
        if not self._consuming:
            await self._declare()
            await self.consumer.consume(no_ack=self.no_ack)
            self._consuming = True

    async def get(self, block: bool = True, timeout: float | None = None) -> Message:
        """Return the next message; raise :attr:`Empty` if none arrives within ``timeout`` seconds.

        Blocks (draining the connection, which also runs other consumers' callbacks on it) until a
        message is there; ``timeout=None`` waits forever. ``block=False`` is :meth:`get_nowait`. The
        message is unacked unless ``no_ack``: settle it. If the wait is cancelled, messages that arrived
        meanwhile stay buffered for the next call.
        """
        if not block:
            return await self.get_nowait()
        await self._consume()
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            if self.buffer:
                return self.buffer.popleft()
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise self.Empty()
            try:
                await self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                pass  # the loop re-checks the buffer, then the deadline

    async def get_nowait(self) -> Message:
        """Return a message without waiting (buffered first, else polled with ``basic_get``); else Empty."""
        if self.buffer:
            return self.buffer.popleft()
        await self._declare()
        channel = self.consumer.channel
        message = await channel.basic_get(self.queue.name, no_ack=self.no_ack, accept=self.consumer.accept)
        if message is None:
            raise self.Empty()
        return message

    async def put(
        self,
        message: Any,
        serializer: str | None = None,
        headers: Mapping[str, Any] | None = None,
        compression: str | None = None,
        routing_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Publish ``message`` to the queue (declaring it first); returns once the broker stored it.

        ``kwargs`` go to :meth:`Producer.publish` (``priority``, ``expiration``, ``correlation_id``...).
        """
        await self._declare()
        await self.producer.publish(
            message,
            serializer=serializer,
            routing_key=routing_key,
            headers=headers,
            compression=compression,
            **kwargs,
        )

    async def clear(self) -> int:
        """Purge the queue's ready messages; return how many. Buffered and unacked messages stay."""
        await self._declare()
        return await self.consumer.purge()

    async def qsize(self) -> int:
        """The number of ready messages in the queue (not counting those buffered here or unacked)."""
        await self._declare()
        info = await self.consumer.channel.queue_declare(self.queue.name, passive=True)
        return info.message_count

    # sync-only: def __len__(self) -> int:
    # sync-only:     return self.qsize()

    def __bool__(self) -> bool:
        return True

    async def close(self) -> None:
        """Stop consuming and give buffered, unreturned messages back to the queue (not redelivered to us).

        Messages already returned by :meth:`get` are the caller's: they stay unacked until settled or
        until the connection closes. The channel and connection stay open.
        """
        if self._consuming:
            self._consuming = False
            await self.consumer.cancel()
        buffer, self.buffer = self.buffer, deque()
        # A requeued message goes to the head of its queue: the last goes back first to keep the order.
        for message in reversed(buffer):
            if not message.acknowledged:
                await message.requeue()

    async def __aenter__(self) -> Self:
        await self._declare()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class SimpleBuffer(SimpleQueue):
    """A transient :class:`SimpleQueue`: not durable, exclusive to this connection, deleted when unused,
    messages not persistent and not acknowledged (``no_ack``): what was delivered cannot come back."""

    no_ack = True
    queue_opts: ClassVar[Mapping[str, Any]] = {"durable": False, "auto_delete": True, "exclusive": True}
    exchange_opts: ClassVar[Mapping[str, Any]] = {
        "type": "direct",
        "durable": False,
        "auto_delete": True,
        "delivery_mode": "transient",
    }
