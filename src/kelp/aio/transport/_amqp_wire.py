"""What an amqp:// connection says to the broker and hears back: every command is written in one write
behind the channels' pending acks; a synchronous request waits for its reply in its channel's FIFO; confirms
settle the outbox (refusals are raised as MessageNacked by the next publish, flush or close); deliveries are
queued for drain; ``connection.blocked`` makes publishers wait; a lost connection fails every waiter at once
(its unconfirmed messages stay in the outbox for the library to publish again)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any

from kelp import amqp
from kelp._envelope import Delivery, Envelope
from kelp._options import integer_option, seconds_option
from kelp.aio._amqp_io import Driver
from kelp.aio.transport._amqp_common import (
    _EPOCH_SHIFT,
    _flag,
    _properties,
    _Reply,
    _seconds,
)
from kelp.aio.transport._amqp_delay import Delays
from kelp.aio.transport.base import Transport
from kelp.exceptions import (
    ChannelError,
    ConnectionError,
    MessageNacked,
    OperationalError,
    channel_error_for,
)
from kelp.url import URL

if TYPE_CHECKING:
    from kelp.aio.transport._amqp_channel import AmqpChannel

logger = logging.getLogger("kelp.transport.amqp")


class AmqpWire(Transport):
    """The connection's state and its exchanges with the broker (see the module docstring)."""

    def __init__(self, url: URL, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        opts = self.options

        def option(name: str, default: Any) -> Any:  # a transport option wins over the URL's query
            return opts[name] if name in opts else url.query.get(name, default)

        scheme = url.transport
        self.confirms = _flag(option("confirms", True))
        self.confirm_publish = _flag(option("confirm_publish", False))
        self.max_unconfirmed = integer_option(
            scheme, "max_unconfirmed", option("max_unconfirmed", 10_000), 1, 2**31 - 1
        )
        self.max_unconfirmed_bytes = integer_option(
            scheme, "max_unconfirmed_bytes", option("max_unconfirmed_bytes", 32 * 1024 * 1024), 1, 2**62
        )
        self.reply_timeout: float | None = _seconds(scheme, "reply_timeout", option("reply_timeout", 60.0))
        self.blocked_timeout: float | None = _seconds(
            scheme, "blocked_timeout", option("blocked_timeout", 60.0)
        )
        heartbeat = seconds_option(
            scheme,
            "heartbeat",
            opts.get("heartbeat") or url.query.get("heartbeat") or 0,
            zero=True,
            maximum=65535,
        )
        self._core = amqp.Connection(
            url.userid or "guest",
            url.password or "guest",
            url.virtual_host or "/",
            heartbeat=max(1, round(heartbeat)) if heartbeat > 0 else 0,
            frame_max=integer_option(
                scheme, "frame_max", option("frame_max", 131072), amqp.FRAME_MIN_SIZE, 2**32 - 1
            ),
            channel_max=integer_option(scheme, "channel_max", option("channel_max", 2047), 1, 65535),
            auth_mechanism="EXTERNAL" if opts.get("login_method") == "EXTERNAL" else "PLAIN",
        )
        self._driver = Driver(self._core, self._on_event, self._on_lost)
        self._channels: dict[int, AmqpChannel] = {}
        self._replies: dict[int, deque[_Reply]] = {}
        self._deliveries: deque[Delivery] = deque()
        self._cancelled: deque[tuple[int, str, str]] = deque()  # (channel, tag, queue) from basic.cancel
        self._lost: OperationalError | None = None
        self._closing = False
        self._outbox: amqp.Outbox[Envelope] = amqp.Outbox()
        self.blocked: str | None = None
        #: How this connection has RabbitMQ hold delayed messages (the plugin or TTL tiers).
        self.delays = Delays(self)
        #: A connection that asks the broker something which may close it (see Delays): no warning then.
        self.probing = False

    # -- the outbox -----------------------------------------------------------------------------------------

    async def flush(self, timeout: float | None) -> None:
        outbox = self._outbox
        try:
            done = await self._await_broker(lambda: not outbox.count, timeout)
        except BaseException:
            self._raise_refused()  # refusals already known are reported before the loss
            raise
        self._raise_refused()
        if not done:
            raise TimeoutError(f"{outbox.count} published messages were not confirmed within {timeout} s")

    def unconfirmed(self) -> list[Envelope]:
        return self._outbox.messages()

    def _has_room(self) -> bool:
        outbox = self._outbox
        return (
            self.blocked is None
            and outbox.count < self.max_unconfirmed
            and outbox.bytes < self.max_unconfirmed_bytes
        )

    def _unblocked(self) -> bool:
        return self.blocked is None

    def _raise_refused(self, own: Sequence[Envelope] = ()) -> None:
        """Raise MessageNacked for ``own`` and every refusal not yet reported (each is reported once)."""
        outbox = self._outbox
        if not own and not outbox.refused:
            return
        refused, closures = outbox.take_refused()
        envelopes = [*own, *refused]
        text = f"the broker refused {len(envelopes)} published messages"
        if own:
            text += f" ({len(own)} of this publish)"
        if closures:
            text += (
                "; the broker closed their channel before confirming them (those published before the"
                f" failing command may have been enqueued all the same): {closures[0]}"
            )
            code = getattr(closures[0], "reply_code", None)
            raise MessageNacked(text, code, envelopes=envelopes) from closures[0]
        raise MessageNacked(text + " (negative confirms)", envelopes=envelopes)

    # -- requests and waiting -------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._lost is not None:
            raise self._lost

    def _pending_acks(self, core: amqp.Connection) -> bytes:
        """Every channel's pending acks, encoded (run under the driver's lock, ahead of the next command)."""
        parts = [channel._ack_frames(core) for channel in list(self._channels.values()) if channel._acks]
        return b"".join(parts)

    async def _send(self, produce: Callable[[amqp.Connection], bytes], drain: bool = False) -> None:
        """Write ``produce``'s bytes, preceded by the pending acks of every channel, in one write.

        With ``drain``, return only once the bytes are handed to the kernel (asyncio: the transport's write
        buffer drained; the sync driver always writes before returning).
        """
        self._check()
        core = self._core
        try:
            await self._driver.send(lambda: self._pending_acks(core) + produce(core), drain)
        except amqp.LocalProtocolError as exc:
            self._check()
            raise ChannelError(f"cannot send this command: {exc}") from exc
        except (OSError, amqp.ProtocolError) as exc:
            self._check()
            raise ConnectionError(f"AMQP connection lost while writing: {exc}") from exc

    async def _request(
        self,
        channel: AmqpChannel,
        produce: Callable[[amqp.Connection, int], bytes],
        closing: bool = False,
    ) -> amqp.Event:
        """Send a synchronous command on ``channel`` and wait for its reply (in the channel's FIFO)."""
        reply = _Reply()
        channel_id = channel.channel_id

        def enqueue(core: amqp.Connection) -> bytes:
            data = produce(core, channel_id)
            replies = self._replies.setdefault(channel_id, deque())
            if closing:  # the core forgets replies owed on a closing channel: so do we
                for owed in replies:
                    owed.error = ChannelError(f"channel {channel_id} was closed by this client")
                    owed.done = True
                replies.clear()
            replies.append(reply)
            return data

        await self._send(enqueue)
        return await self._result(reply)

    async def _result(self, reply: _Reply) -> amqp.Event:
        done = await self._driver.wait_for(lambda: reply.done or self._lost, self.reply_timeout)
        if reply.done:
            if reply.error is not None:
                raise reply.error
            assert reply.event is not None
            return reply.event
        self._check()
        assert not done
        error = ConnectionError(f"the broker did not answer within {self.reply_timeout} s")
        self._on_lost(error)
        await self._driver.close()
        raise error

    async def _await_broker(self, predicate: Callable[[], object], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (confirms arrived, the alarm cleared); False after ``timeout`` s.

        While the broker blocks the connection (``connection.blocked``) the wait is bounded by
        ``blocked_timeout`` too, then raises OperationalError; a lost connection raises its error.
        """
        if predicate():
            return True
        deadline = None if timeout is None else monotonic() + timeout
        blocked_until: float | None = None
        wait_for = self._driver.wait_for
        while True:
            now = monotonic()
            left = None if deadline is None else max(0.0, deadline - now)
            if self.blocked is None:
                blocked_until = None
                await wait_for(lambda: predicate() or self.blocked is not None or self._lost, left)
            else:
                if blocked_until is None:
                    logger.warning("the broker blocked this connection (%s); publish waits", self.blocked)
                    blocked_until = None if self.blocked_timeout is None else now + self.blocked_timeout
                if blocked_until is not None:
                    left = blocked_until - now if left is None else min(left, blocked_until - now)
                await wait_for(lambda: predicate() or self.blocked is None or self._lost, left)
            if predicate():
                return True
            self._check()
            now = monotonic()
            if self.blocked is not None and blocked_until is not None and now >= blocked_until:
                raise OperationalError(
                    f"the broker kept this connection blocked ({self.blocked}) for {self.blocked_timeout} s"
                )
            if deadline is not None and now >= deadline:
                return False

    # -- events (run by the driver: the reader thread under its lock, or the event loop) ------------------

    def _on_lost(self, exc: BaseException) -> None:
        if self._lost is not None:
            return
        if isinstance(exc, OperationalError):
            error = exc
        elif isinstance(exc, amqp.RemoteProtocolError):
            error = ConnectionError(f"AMQP protocol error from the broker: {exc}", exc.reply_code)
        else:
            error = ConnectionError(f"AMQP connection to {self.url.as_uri()} lost: {exc}")
        self._lost = error
        if not self._closing and not self.probing:
            logger.warning("%s", error)
        self._fail_waiters(error)

    def _fail_waiters(self, error: BaseException) -> None:
        for replies in self._replies.values():
            for reply in replies:
                reply.error = error
                reply.done = True
            replies.clear()
        self._outbox.fail_waiters(error)  # the messages stay: unconfirmed() hands them to the library

    def _on_event(self, event: amqp.Event) -> None:
        if isinstance(event, amqp.Deliver):
            channel = self._channels.get(event.channel)
            epoch = channel._epoch if channel is not None else 0
            props = event.properties
            self._deliveries.append(
                Delivery(
                    event.channel,
                    event.consumer_tag,
                    event.delivery_tag | (epoch << _EPOCH_SHIFT),
                    event.body,
                    _properties(props),
                    dict(props.headers) if props.headers else {},
                    event.exchange,
                    event.routing_key,
                    event.redelivered,
                )
            )
            return
        if isinstance(event, amqp.Confirmed):
            self._outbox.settle(event.channel, event.delivery_tags, event.ack)
            return
        if isinstance(event, amqp.Return):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._on_return(event)
            return
        if isinstance(event, amqp.ChannelClosed):
            self._on_channel_closed(event)
            return
        if isinstance(event, amqp.ConnectionClosed):
            if event.by_peer:
                self._on_lost(
                    ConnectionError(
                        f"the broker closed the connection: {event.reply_code} {event.reply_text}",
                        event.reply_code,
                    )
                )
            else:
                self._on_lost(OperationalError("the AMQP connection was closed"))
            return
        if isinstance(event, amqp.ConnectionBlocked):
            self.blocked = event.reason or "blocked"
            logger.warning("the broker blocked this connection: %s", self.blocked)
            return
        if isinstance(event, amqp.ConnectionUnblocked):
            self.blocked = None
            logger.info("the broker unblocked this connection")
            return
        if isinstance(event, amqp.ConsumerCancelled):
            channel = self._channels.get(event.channel)
            queue = channel.consumers.pop(event.consumer_tag, None) if channel is not None else None
            if queue is not None:  # reported by the next drain(), after the deliveries that came before it
                self._cancelled.append((event.channel, event.consumer_tag, queue))
            return
        if isinstance(event, amqp.ConnectionOpened | amqp.Heartbeat | amqp.ChannelFlow):
            return
        channel_id = getattr(event, "channel", None)
        replies = self._replies.get(channel_id) if channel_id is not None else None
        if replies:
            reply = replies.popleft()
            reply.event = event
            reply.done = True

    def _on_channel_closed(self, event: amqp.ChannelClosed) -> None:
        replies = self._replies.pop(event.channel, None)
        channel = self._channels.get(event.channel)
        if not event.by_peer or (channel is not None and channel._closed_by_us):
            # the answer to our own close (even if the broker closed it first): the only reply still owed
            for reply in replies or ():
                reply.event = event
                reply.done = True
            if channel is not None:
                channel.is_open = False
            return
        error = channel_error_for(event.reply_code, event.reply_text)
        if replies:
            for reply in replies:
                reply.error = error
                reply.done = True
        if channel is not None:
            channel._on_closed(error)
            if replies:
                channel._unreported = None
            logger.info("the broker closed channel %d: %s", event.channel, error)
