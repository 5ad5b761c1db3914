# Generated from src/kelp/aio/mixins.py by scripts/unasync.py; do not edit.
"""ConsumerMixin and ConsumerProducerMixin: the skeleton of a long-running consumer program.

Subclass, set ``self.connection`` and define :meth:`ConsumerMixin.get_consumers`; :meth:`~ConsumerMixin.run`
then connects (its own clone of ``connection``), starts the consumers, dispatches messages to their
callbacks and, when the broker connection is lost, reconnects with bounded backoff and starts again.
Set ``should_stop = True`` (from a callback, another thread or another task) to make ``run`` return; it
notices within ``safety_interval`` seconds (1 by default).

What happens to messages: callbacks settle them. When the connection is lost, every message delivered but
not yet acked returns to its queue (flagged ``redelivered``) and is delivered again after the reconnect;
when ``run`` stops, the connection is closed and the same holds. Handlers are plain functions in
the sync API and may also be ``def`` in the asyncio API.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from kelp._backend import maybe_await, monotonic, sleep
from kelp.common import ignore_errors
from kelp.connection import Channel, Connection
from kelp.message import Message
from kelp.messaging import Consumer as MessageConsumer
from kelp.messaging import Producer

__all__ = ["ConsumerMixin", "ConsumerProducerMixin"]

logger = logging.getLogger("kelp.mixins")

ConsumerContext = tuple[Connection, Channel, list[MessageConsumer]]


class ConsumerMixin:
    """Mixin for consumer programs: subclass it, set :attr:`connection`, define :meth:`get_consumers`.

    Hooks, all optional to override (plain, or ``def`` in the asyncio API):
    :meth:`on_connection_error`, :meth:`on_connection_revived`, :meth:`on_consume_ready`,
    :meth:`on_consume_end`, :meth:`on_iteration`, :meth:`on_decode_error` and the :meth:`extra_context`
    context manager.
    """

    #: The connection to clone for consuming (the mixin never uses this object itself for I/O).
    connection: Connection

    #: Maximum attempts to reconnect before :meth:`run` gives up (None: retry until :attr:`should_stop`).
    connect_max_retries: int | None = None

    #: Set to True to make :meth:`run` and :meth:`consume` return (noticed within ``safety_interval``).
    should_stop: bool = False

    #: Backoff between connection attempts: start, step, maximum (seconds).
    connect_interval_start: float = 2.0
    connect_interval_step: float = 2.0
    connect_interval_max: float = 30.0

    #: Backoff between restarts of the consumers after a connection or channel error: it doubles from
    #: ``restart_interval_start`` up to ``restart_interval_max`` and starts over once consumers are ready.
    restart_interval_start: float = 1.0
    restart_interval_max: float = 30.0

    #: How often a backoff sleep looks at :attr:`should_stop` (seconds).
    stop_check_interval: float = 0.1

    _restart_interval: float | None = None

    def get_consumers(
        self, Consumer: Callable[..., MessageConsumer], channel: Channel
    ) -> Sequence[MessageConsumer]:
        """Return the consumers to run. ``Consumer`` is the :class:`Consumer` class with the channel
        and ``on_decode_error`` already given: ``Consumer(queues=[...], callbacks=[...])``."""
        raise NotImplementedError("subclasses of ConsumerMixin must define get_consumers()")

    # --- hooks ------------------------------------------------------------------------------------------

    def on_connection_revived(self) -> None:
        """Called each time the consuming connection is (re-)established."""

    def on_consume_ready(
        self, connection: Connection, channel: Channel, consumers: Sequence[MessageConsumer], **kwargs: Any
    ) -> None:
        """Called once the consumers are consuming; ``kwargs`` are those given to :meth:`consume`."""

    def on_consume_end(self, connection: Connection, channel: Channel) -> None:
        """Called after the consumers were cancelled, before the connection closes."""

    def on_iteration(self) -> None:
        """Called before each wait for messages (at least every ``safety_interval`` seconds)."""

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """A body could not be decoded (or its content type is not accepted): log it and ack it, so that
        it is not redelivered forever. Override to dead-letter it instead (``message.reject()``)."""
        logger.error(
            "message %s acked without processing: its body does not decode (%r; content type %r, "
            "content encoding %r, first bytes %r)",
            message.delivery_tag,
            exc,
            message.content_type,
            message.content_encoding,
            message.body[:256],
        )
        message.ack()

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        """Connecting failed; the next attempt is in ``interval`` seconds."""
        logger.warning("broker connection error, trying again in %.1f seconds: %r", interval, exc)

    @contextmanager
    def extra_context(self, connection: Connection, channel: Channel) -> Iterator[None]:
        """A context entered once the consumers are set up and left before they are cancelled."""
        yield

    # --- running ----------------------------------------------------------------------------------------

    @property
    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return self.connection.connection_errors

    @property
    def channel_errors(self) -> tuple[type[BaseException], ...]:
        return self.connection.channel_errors

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """Consume until :attr:`should_stop` is set; restart after connection and channel errors.

        Blocks (runs the consumers' callbacks in this thread or task). ``kwargs`` go to :meth:`consume`
        (``safety_interval``...). After a lost connection the consumers are restarted after a backoff
        (see :attr:`restart_interval_start`); ``_tokens`` is accepted for Kombu compatibility.
        """
        errors = self.connection_errors + self.channel_errors
        while not self.should_stop:
            try:
                for _ in self.consume(limit=None, **kwargs):
                    pass
            except errors as exc:
                if self._stopping():
                    break
                interval = self._next_restart_interval()
                logger.warning(
                    "connection to the broker lost (%r); restarting the consumers in %.1fs",
                    exc,
                    interval,
                    exc_info=True,
                )
                self._sleep_unless_stopped(interval)

    def _stopping(self) -> bool:
        # A method, not the attribute, where another thread or task may have just set it.
        return self.should_stop

    def _next_restart_interval(self) -> float:
        interval = self._restart_interval
        interval = (
            self.restart_interval_start if interval is None else min(interval * 2, self.restart_interval_max)
        )
        self._restart_interval = interval
        return interval

    def _sleep_unless_stopped(self, seconds: float) -> None:
        deadline = monotonic() + seconds
        while not self.should_stop and (remaining := deadline - monotonic()) > 0:
            sleep(min(remaining, self.stop_check_interval))

    def consume(
        self,
        limit: int | None = None,
        timeout: float | None = None,
        safety_interval: float = 1,
        **kwargs: Any,
    ) -> Iterator[None]:
        """Connect, start the consumers and yield once per batch of messages dispatched to the callbacks.

        Stops after ``limit`` batches (None: never) or when :attr:`should_stop` is set, which is checked
        at least every ``safety_interval`` seconds. Raises ``socket.timeout`` when ``timeout`` seconds
        pass with no message. Connection errors propagate (:meth:`run` restarts on them). On exit the
        consumers are cancelled and the connection closed: unacked messages return to their queues.
        With asyncio, close the generator (``contextlib.aclosing``) if you stop iterating early.
        """
        elapsed = 0.0
        with self.consumer_context(**kwargs) as (conn, _channel, _consumers):
            self._restart_interval = None
            done = 0
            while not self.should_stop and (not limit or done < limit):
                _hook(self.on_iteration)
                try:
                    conn.drain_events(timeout=safety_interval)
                except TimeoutError:
                    elapsed += safety_interval
                    if timeout and elapsed >= timeout:
                        raise
                    continue
                except conn.connection_errors:
                    if self._stopping():
                        break
                    raise
                elapsed = 0.0
                done += 1
                yield None
        logger.debug("ConsumerMixin: consumers stopped after %d batches", done)

    @contextmanager
    def consumer_context(self, **kwargs: Any) -> Iterator[ConsumerContext]:
        """:meth:`Consumer` plus :meth:`extra_context`, calling :meth:`on_consume_ready` inside both."""
        with self.Consumer() as (connection, channel, consumers):  # noqa: SIM117 - extra_context needs them
            with self.extra_context(connection, channel):
                _hook(self.on_consume_ready, connection, channel, consumers, **kwargs)
                yield connection, channel, consumers

    def create_connection(self) -> Connection:
        """A new connection to consume on: by default a clone of :attr:`connection`."""
        return self.connection.clone()

    @contextmanager
    def establish_connection(self) -> Iterator[Connection]:
        """Connect a new connection (retrying with backoff, see :attr:`connect_max_retries`); close it on
        exit. Each failed attempt calls :meth:`on_connection_error`; raises the last error when out of
        retries or when :attr:`should_stop` is set while waiting."""
        conn = self.create_connection()
        try:
            self._connect(conn)
            yield conn
        finally:
            ignore_errors(conn, conn.close)

    def _connect(self, conn: Connection) -> None:
        for retries in itertools.count():
            try:
                conn.connect()
                return
            except conn.recoverable_connection_errors as exc:
                max_retries = self.connect_max_retries
                if self.should_stop or (max_retries is not None and retries >= max_retries):
                    raise
                interval = min(
                    self.connect_interval_start + retries * self.connect_interval_step,
                    self.connect_interval_max,
                )
                _hook(self.on_connection_error, exc, interval)
                self._sleep_unless_stopped(interval)
                if self.should_stop:
                    raise

    @contextmanager
    def Consumer(self) -> Iterator[ConsumerContext]:
        """Connect, build the consumers with :meth:`get_consumers` and start them; yield
        ``(connection, channel, consumers)``; cancel them and close the connection on exit."""
        with self.establish_connection() as conn:
            _hook(self.on_connection_revived)
            logger.info("ConsumerMixin: consuming from %s", conn.as_uri())
            channel = conn.ensure_default_channel()
            factory = partial(MessageConsumer, channel, on_decode_error=self.on_decode_error)
            consumers = list(maybe_await(self.get_consumers(factory, channel)))
            started: list[MessageConsumer] = []
            try:
                for consumer in consumers:
                    consumer.consume()
                    started.append(consumer)
                yield conn, channel, consumers
            finally:
                for consumer in reversed(started):
                    ignore_errors(conn, consumer.cancel)
            logger.debug("ConsumerMixin: %d consumers cancelled", len(started))
            _hook(self.on_consume_end, conn, channel)

    def maybe_conn_error(self, fun: Callable[[], Any]) -> Any:
        """Call ``fun`` ignoring connection and channel errors (prefer :func:`kelp.common.ignore_errors`)."""
        return ignore_errors(self, fun)


def _hook(hook: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call an overridable hook, which may be plain or (in the asyncio API) ``def``."""
    maybe_await(hook(*args, **kwargs))


class ConsumerProducerMixin(ConsumerMixin):
    """A :class:`ConsumerMixin` that also publishes, on a second connection.

    :attr:`producer` publishes over :attr:`producer_connection`, a clone of :attr:`connection` made on
    first use (and connected when the first message is published), so a callback that publishes never
    waits behind the consuming connection. It is closed when the consumers end.
    """

    _producer_connection: Connection | None = None

    def on_consume_end(self, connection: Connection, channel: Channel) -> None:
        conn, self._producer_connection = self._producer_connection, None
        if conn is not None:
            ignore_errors(conn, conn.close)

    @property
    def producer(self) -> Producer:
        """A producer on :attr:`producer_connection` (a new, cheap object on each access)."""
        return Producer(self.producer_connection)

    @property
    def producer_connection(self) -> Connection:
        if self._producer_connection is None:
            self._producer_connection = self.connection.clone()
        return self._producer_connection
