# Generated from src/kelp/aio/_consumer.py by scripts/unasync.py; do not edit.
"""``Consumer``: subscribes to queues and hands each delivered message, decoded, to its callbacks, which
ack, reject or requeue it; a body that cannot be decoded goes to ``on_decode_error`` (or raises, leaving
the message unacked)."""

from __future__ import annotations

import itertools
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

from kelp import _observe
from kelp._backend import maybe_await
from kelp._declare import _Source, maybe_declare
from kelp.connection import Channel, Connection
from kelp.entity import Queue
from kelp.exceptions import ContentDisallowed, UsageError
from kelp.message import Message
from kelp.serialization import prepare_accept_content

__all__ = ["Consumer"]

_tags = itertools.count(1)


class Consumer:
    """Receives messages from one or more queues and hands them to callbacks.

    ``callbacks`` are called as ``callback(body, message)`` with the decoded body; ``on_message(message)``
    replaces them and receives the undecoded message. A body that cannot be decoded — refused by the
    ``accept`` list (by default only json and raw content are decoded), not deserializable, or not
    decompressible (an unknown or corrupt ``compression``; this one bypasses ``on_message`` too) — goes to
    ``on_decode_error(message, exc)``, where the message can be acked or rejected. With no
    ``on_decode_error`` the error raises from ``drain_events`` and the message stays unacked until its
    channel closes; deliveries behind it are dispatched by the next ``drain_events``. Messages arrive
    only while the connection drains events (``drain_events``, ``iterate``, ``for``).

    ``prefetch_count`` bounds the unacked messages delivered to each of this consumer's queues.
    """

    ContentDisallowed = ContentDisallowed

    def __init__(
        self,
        channel: Channel | Connection,
        queues: Queue | Sequence[Queue] | None = None,
        no_ack: bool | None = None,
        auto_declare: bool | None = None,
        callbacks: Sequence[Callable[[Any, Message], Any]] | None = None,
        on_decode_error: Callable[[Message, Exception], Any] | None = None,
        on_message: Callable[[Message], Any] | None = None,
        accept: Iterable[str] | None = None,
        prefetch_count: int | None = None,
        tag_prefix: str | None = None,
    ) -> None:
        self._source = _Source(channel)
        if isinstance(queues, Queue):
            queues = [queues]
        self.queues: list[Queue] = list(queues or [])
        self.no_ack = bool(no_ack)
        self.auto_declare = True if auto_declare is None else auto_declare
        self.callbacks: list[Callable[[Any, Message], Any]] = list(callbacks or [])
        self.on_decode_error = on_decode_error
        self.on_message = on_message
        self.accept = prepare_accept_content(accept)
        self.prefetch_count = prefetch_count
        self._prefetch_global = False  # the window last set by qos(): the channel's (True) or each consumer's
        self.tag_prefix = tag_prefix if tag_prefix is not None else f"kelp.{uuid.uuid4().hex[:12]}."
        self._tags: dict[str, str] = {}
        self._channel_used: Channel | None = None
        # Messages received for iterate() and not yet yielded (None when not iterating).
        self._buffer: deque[Message] | None = None
        self.declare() if self.auto_declare else None

    def __repr__(self) -> str:
        return f"<Consumer: {self.queues!r}>"

    @property
    def connection(self) -> Connection:
        return self._source.connection

    @property
    def channel(self) -> Channel:
        return self.connection.default_channel if self._source._channel is None else self._source._channel

    def revive(self, channel: Channel | Connection) -> None:
        """Rebind to a new channel after a reconnect; call :meth:`consume` again to resume.

        A no-op when the consumer already consumes on that channel: the connection restarts its
        consumers itself when it reconnects, before ``Connection.ensure`` revives objects."""
        target = channel._default_channel if isinstance(channel, Connection) else channel
        if self._channel_used is not None and self._channel_used is target and target.is_open:
            return
        self._source.revive(channel)
        self._tags.clear()
        self._channel_used = None

    def declare(self) -> None:
        """Declare every queue (with its exchanges and bindings)."""
        channel = self._source.get()
        for queue in self.queues:
            maybe_declare(queue, channel)

    def register_callback(self, callback: Callable[[Any, Message], Any]) -> None:
        self.callbacks.append(callback)

    def add_queue(self, queue: Queue) -> Queue:
        """Add a queue (declared now when ``auto_declare``); consumed from by the next :meth:`consume`."""
        if self.auto_declare:
            maybe_declare(queue, self._source.get())
        self.queues.append(queue)
        return queue

    def consume(self, no_ack: bool | None = None) -> None:
        """Start consuming from every queue not consumed yet (declaring them when ``auto_declare``)."""
        channel = self._source.get()
        if self.auto_declare:
            for queue in self.queues:
                maybe_declare(queue, channel)
        if self.prefetch_count is not None:  # again on a new channel (after a reconnect), as it was set
            channel.basic_qos(0, self.prefetch_count, self._prefetch_global)
        flag = self.no_ack if no_ack is None else no_ack
        for queue in self.queues:
            if queue.name in self._tags:
                continue
            tag = f"{self.tag_prefix}{next(_tags)}"
            channel.connection._track_consumer(self)
            self._tags[queue.name] = channel.basic_consume(
                queue.name,
                tag,
                no_ack=bool(queue.no_ack) or flag,
                callback=self._receive_callback,
                arguments=queue.consumer_arguments,
            )
        self._channel_used = channel

    def cancel(self) -> None:
        """Stop consuming. Messages delivered but not settled stay unacked until settled or closed;
        messages received for :meth:`iterate` but never yielded are requeued, in order."""
        channel = self._channel_used
        tags, self._tags = self._tags, {}
        if channel is not None:
            for tag in tags.values():
                channel.basic_cancel(tag)
        buffer, self._buffer = self._buffer, None
        while buffer:
            # Newest first: each requeue goes to the head of its queue, so the order is kept.
            message = buffer.pop()
            if not message.acknowledged and message.channel is not None and message.channel.is_open:
                message.requeue()

    close = cancel

    def cancel_by_queue(self, queue: str) -> None:
        tag = self._tags.pop(queue, None)
        if tag is not None and self._channel_used is not None:
            self._channel_used.basic_cancel(tag)
        self.queues = [q for q in self.queues if q.name != queue]

    def _cancelled_by_broker(self, consumer_tag: str) -> None:
        """The broker cancelled one of our subscriptions (its queue was deleted): forget it, and forget
        that the queue was declared, so that :meth:`consume` declares it again and resubscribes."""
        for name, tag in list(self._tags.items()):
            if tag == consumer_tag:
                del self._tags[name]
                for queue in self.queues:
                    if queue.name == name:
                        self.connection.declared_entities.discard(queue)

    def consuming_from(self, queue: str | Queue) -> bool:
        name = queue.name if isinstance(queue, Queue) else queue
        return name in self._tags

    @property
    def active_queues(self) -> list[str]:
        return list(self._tags)

    def purge(self) -> int:
        """Purge every queue of this consumer; return the number of messages removed."""
        channel = self._source.get()
        return sum([channel.queue_purge(queue.name) for queue in self.queues])

    def qos(self, prefetch_size: int = 0, prefetch_count: int = 0, apply_global: bool = False) -> None:
        """Set the prefetch window for consumers started after this call (AMQP basic.qos); with
        ``apply_global``, one window shared by every consumer of the channel."""
        self.prefetch_count = prefetch_count
        self._prefetch_global = apply_global
        (self._source.get()).basic_qos(prefetch_size, prefetch_count, apply_global)

    def recover(self, requeue: bool = False) -> None:
        """Return every unacked message of this channel to its queue, to be redelivered."""
        (self._source.get()).basic_recover(requeue=True)

    def flow(self, active: bool) -> None:
        """Not supported by kelp's transports; present for API compatibility."""
        raise UsageError("channel flow control is not supported; cancel and consume instead")

    def receive(self, body: Any, message: Message) -> None:
        """Run the callbacks on a decoded message."""
        if not self.callbacks:
            raise UsageError(f"{self!r} received a message but has no callbacks; add one or use on_message")
        for callback in self.callbacks:
            maybe_await(callback(body, message))

    def _receive_callback(self, message: Message, observed: bool = False) -> None:
        message.accept = self.accept
        if self._buffer is not None:
            self._buffer.append(message)
            return
        observer = _observe.observer
        if observer is not None and not observed:
            # Runs this method again inside the process span (unobserved, it costs no extra call).
            done = observer.process_start(self.connection, _observe.queue_of(self._tags, message), message)
            try:
                self._receive_callback(message, True)
            except BaseException as exc:
                done(exc)
                raise
            done(None)
            return
        if message.errors:  # not decompressible: even on_message would get a body it cannot use
            self._decode_error(message, message.errors[0])
            return
        if self.on_message is not None:
            maybe_await(self.on_message(message))
            return
        try:
            body = message.decode()
        except Exception as exc:
            self._decode_error(message, exc)
            return
        self.receive(body, message)

    def _decode_error(self, message: Message, exc: Exception) -> None:
        if self.on_decode_error is None:
            raise exc
        maybe_await(self.on_decode_error(message, exc))

    def iterate(self, limit: int | None = None, timeout: float | None = None) -> Iterator[Message]:
        """Yield messages as they arrive (starting to consume if needed), up to ``limit``.

        Each wait lasts at most ``timeout`` seconds (None: forever) and raises ``socket.timeout`` when it
        runs out. While iterating, callbacks are bypassed. Messages received but not yet yielded when the
        loop stops stay buffered for the next iteration, and :meth:`cancel` requeues them: none is lost.
        """
        if self._buffer is None:
            self._buffer = deque()
        buffer = self._buffer
        if not self._tags:
            self.consume()
        count = 0
        while limit is None or count < limit:
            while not buffer:
                self.connection.drain_events(timeout=timeout)
            message = buffer.popleft()
            observer = _observe.observer
            if observer is None:
                yield message
            else:
                # The span covers the loop body: from this yield until the loop asks for the next one.
                done = observer.process_start(
                    self.connection, _observe.queue_of(self._tags, message), message
                )
                try:
                    yield message
                except BaseException as exc:
                    done(exc)
                    raise
                done(None)
            count += 1

    def __iter__(self) -> Iterator[Message]:
        return self.iterate()

    def __enter__(self) -> Self:
        self.consume()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()
