# Generated from src/kelp/aio/_reconnect.py by scripts/unasync.py; do not edit.
"""Reconnecting: retry with bounded backoff, failover between URLs, and restoring what a lost connection
had (declarations, consumers, publishes it had not had confirmed).

:class:`Reconnecting` is a part of :class:`~kelp.connection.Connection`, kept apart because it is one
job: what happens between a connection error and working again.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Self, cast

from kelp._addressing import resolve_transport
from kelp._backend import maybe_await, monotonic, sleep
from kelp._envelope import Envelope
from kelp.transport.base import Transport
from kelp.url import URL

if TYPE_CHECKING:
    from kelp._channel import Channel
    from kelp.connection import Connection
    from kelp.messaging import Consumer

logger = logging.getLogger("kelp.connection")
#: Messages published again after a reconnect per confirmed slice (see ``_republish_outbox``).
_REPUBLISH_SLICE = 100


class Reconnecting:
    """Connection's retry, failover and recovery methods (mixed into Connection)."""

    if TYPE_CHECKING:
        # Provided by Connection.
        urls: list[URL]
        url: URL
        transport_cls: type[Transport]
        _url_cycle: Iterator[URL]
        _transport: Transport | None
        _outbox: list[Envelope]
        _consumers: weakref.WeakSet[Consumer]

        @property
        def connected(self) -> bool: ...
        @property
        def default_channel(self) -> Channel: ...
        def as_uri(self, include_password: bool = False, mask: str = "**") -> str: ...
        def ensure_default_channel(self) -> Channel: ...
        def _connect_once(self) -> None: ...
        def _discard_transport(self) -> None: ...

    def _republish_outbox(self) -> None:
        """Publish again what the lost connection's broker never confirmed (at-least-once: a message the
        broker took just before the loss arrives twice). Mandatory ones that no queue takes now are
        logged, since the producer that published them has already returned. Slices of
        ``_REPUBLISH_SLICE`` are each confirmed before the next is sent, so that a connection that keeps
        dropping still makes progress (what was confirmed before a drop is not sent a third time)."""
        if not self._outbox:
            return
        envelopes, self._outbox = self._outbox, []
        logger.warning("publishing again %d messages the lost connection had not confirmed", len(envelopes))
        done = 0
        try:
            while done < len(envelopes):
                chunk = envelopes[done : done + _REPUBLISH_SLICE]
                returned = self.default_channel.publish_batch(chunk)
                done += len(chunk)  # in the transport's outbox now, until confirmed
                for envelope in returned:
                    logger.warning("%r was published again after a reconnect and no queue took it", envelope)
                assert self._transport is not None
                self._transport.flush(None)
        except BaseException:
            self._outbox = envelopes[done:] + self._outbox
            raise

    def _recover(self, declared: list[Any]) -> None:
        """After a reconnect: declare again what ``maybe_declare`` had declared (durable entities), then
        restart every consumer that was consuming, on the new default channel. Messages that were
        delivered but not acked on the lost connection come back from the broker flagged
        ``redelivered``; settling the old Message objects raises, since their channel is gone."""
        from kelp.messaging import maybe_declare

        channel = self.default_channel
        for entity in declared:
            maybe_declare(entity, channel)
        restarted = 0
        for consumer in list(self._consumers):
            if consumer.active_queues:
                consumer.revive(cast("Connection", self))
                consumer.consume()
                restarted += 1
        logger.warning(
            "reconnected to %s: declared %d entities again and restarted %d consumers",
            self.as_uri(),
            len(declared),
            restarted,
        )

    def ensure_connection(
        self,
        errback: Callable[[BaseException, float], Any] | None = None,
        max_retries: int | None = None,
        interval_start: float = 2,
        interval_step: float = 2,
        interval_max: float = 30,
        callback: Callable[[], Any] | None = None,
        reraise_as_library_errors: bool = True,
        timeout: float | None = None,
    ) -> Self:
        """Connect if needed, retrying with bounded backoff and moving through the failover URLs.

        ``max_retries`` None retries forever (bounded by ``timeout`` seconds if given). ``errback(exc,
        interval)`` is called before each wait. Raises the last connection error when retries run out.
        """
        if self.connected:
            return self
        deadline = None if timeout is None else monotonic() + timeout
        for attempt, interval in enumerate(_intervals(interval_start, interval_step, interval_max)):
            try:
                self._connect_once()
                return self
            except self.recoverable_connection_errors as exc:
                self._discard_transport()
                out_of_time = deadline is not None and monotonic() + interval > deadline
                if (max_retries is not None and attempt >= max_retries) or out_of_time:
                    raise
                logger.warning(
                    "connection to %s failed (%s); retrying in %.1fs", self.as_uri(), exc, interval
                )
                if errback is not None:
                    maybe_await(errback(exc, interval))
                self.maybe_switch_next()
                sleep(interval)
                if callback is not None:
                    maybe_await(callback())
        raise AssertionError("unreachable")  # pragma: no cover

    def maybe_switch_next(self) -> None:
        """Move to the next failover URL (round robin)."""
        if len(self.urls) > 1:
            self.url = next(self._url_cycle)
            self.transport_cls = resolve_transport(self.url.transport)

    # --- retrying -------------------------------------------------------------------------------------

    @property
    def connection_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.connection_errors

    @property
    def channel_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.channel_errors

    @property
    def recoverable_connection_errors(self) -> tuple[type[BaseException], ...]:
        return self.transport_cls.connection_errors

    @property
    def recoverable_channel_errors(self) -> tuple[type[BaseException], ...]:
        return ()

    def ensure(
        self,
        obj: Any,
        fun: Callable[..., Any],
        errback: Callable[[BaseException, float], Any] | None = None,
        max_retries: int | None = None,
        interval_start: float = 1,
        interval_step: float = 1,
        interval_max: float = 1,
        on_revive: Callable[[Channel], Any] | None = None,
        retry_errors: tuple[type[BaseException], ...] | None = None,
    ) -> Callable[..., Any]:
        """Wrap ``fun`` so that a lost connection is re-established and the call retried.

        Only connection errors (and ``retry_errors``) are retried, at most ``max_retries`` times (None:
        forever) with bounded backoff; after reconnecting, ``obj.revive(channel)`` rebinds the object.
        A retried publish may be delivered twice if the first attempt reached the broker before the
        connection dropped (at-least-once).
        """
        errors = self.recoverable_connection_errors + tuple(retry_errors or ())

        def ensured(*args: Any, **kwargs: Any) -> Any:
            intervals = _intervals(interval_start, interval_step, interval_max)
            for retries in itertools.count():
                try:
                    return maybe_await(fun(*args, **kwargs))
                except errors as exc:
                    if max_retries is not None and retries >= max_retries:
                        raise
                    interval = next(intervals)
                    logger.warning("%s failed (%s); reconnecting and retrying in %.1fs", fun, exc, interval)
                    if errback is not None:
                        maybe_await(errback(exc, interval))
                    self._discard_transport()
                    self.maybe_switch_next()
                    sleep(interval)
                    self.ensure_connection(
                        max_retries=max_retries,
                        interval_start=interval_start,
                        interval_step=interval_step,
                        interval_max=interval_max,
                    )
                    channel = self.default_channel
                    if hasattr(obj, "revive"):
                        maybe_await(obj.revive(channel))
                    if on_revive is not None:
                        maybe_await(on_revive(channel))
            raise AssertionError("unreachable")  # pragma: no cover

        return ensured

    def autoretry(
        self, fun: Callable[..., Any], channel: Channel | None = None, **ensure_options: Any
    ) -> Callable[..., Any]:
        """``fun`` wrapped to reconnect and retry on connection errors (see :meth:`ensure`).

        The wrapper calls ``fun(*args, channel=channel, **kwargs)`` and returns ``(result, channel)``:
        ``channel`` is the one given here, the default channel when none was, and after a reconnect the
        new connection's default channel. A retried ``fun`` may run twice.
        """
        connection = self
        current: list[Channel | None] = [channel]

        class Revival:
            def revive(self, channel: Channel) -> None:
                current[0] = channel

            def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, Channel]:
                used = current[0]
                if used is None:
                    used = current[0] = connection.ensure_default_channel()
                return maybe_await(fun(*args, channel=used, **kwargs)), used

        revival = Revival()
        return self.ensure(revival, revival, **ensure_options)


def _intervals(start: float, step: float, maximum: float) -> Iterator[float]:
    """Backoff intervals: start, start+step, ... capped at ``maximum``."""
    interval = start
    while True:
        yield min(interval, maximum) if maximum else interval
        interval += step
