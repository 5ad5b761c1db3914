"""``amqp://`` and ``amqps://``: RabbitMQ over AMQP 0-9-1, on kelp's own sans-IO protocol core.

``amqp://user:password@host:port/vhost`` (``amqps://`` or ``ssl=True`` for TLS; ``ssl`` may also be an
:class:`ssl.SSLContext`). The broker routes; this module maps the transport interface onto protocol commands
(:mod:`kelp.amqp`) and a thin I/O driver (a reader thread in the sync API, an ``asyncio.Protocol`` in
``kelp.aio``). Transport options, or URL query options of the same name (a transport option wins; a bad
value raises InvalidURL): ``confirms`` (default True: the channel publishes in confirm mode; False turns
confirms off), ``confirm_publish`` (default False; True: each publish waits for its own confirms),
``max_unconfirmed`` (10,000 messages) and ``max_unconfirmed_bytes`` (32 MiB) bound the outbox,
``heartbeat`` (seconds, 0 = off), ``reply_timeout`` (seconds to wait for a synchronous reply, default 60),
``blocked_timeout`` (seconds any wait of a publish or flush lasts while the broker has blocked the
connection, default 60), ``frame_max``, ``channel_max``.

What happens to a message:

* **delayed** (``countdown``/``eta``): RabbitMQ holds it, with the delayed-message plugin when the node has
  it, otherwise in kelp's TTL tier queues (:mod:`kelp.aio.transport._amqp_delay`); it is routed when due,
  never early, late by at most about 1/8 s on the tiers. It cannot be cancelled or counted per queue.

* **publish** writes a whole batch in one write and, by default, returns without waiting for the broker's
  confirms (they are pipelined). A persistent message has left the process when it returns: the kernel has
  sent its bytes (not merely queued them) and the confirms that had arrived were read (a process killed
  with unread bytes resets the connection: its kernel drops what it had not sent and the broker may drop
  what it had not processed; only a confirm makes a message certain). Each written message sits in the
  connection's **outbox** (by channel and sequence number) until ``basic.ack`` / ``basic.nack`` (with
  ``multiple``) settles it; a full outbox (``max_unconfirmed`` / ``max_unconfirmed_bytes``) makes publish
  wait for confirms first. A negative confirm (e.g. a full queue with ``x-overflow: reject-publish``) is
  raised as :class:`~kelp.exceptions.MessageNacked` naming the envelopes by the connection's next publish,
  ``flush`` or close; so are the unconfirmed messages of a channel the broker closed (a publish to a
  missing exchange), with its reply code and error as the cause. ``flush`` waits for every confirm;
  ``unconfirmed()`` is the outbox, which the library publishes again after a reconnect (at-least-once). A
  publish that raises took its messages out of the outbox: the caller owns them again.
* **confirm_publish=True**, and any batch with a ``mandatory`` message, waits for the batch's confirms and
  raises MessageNacked for its own refusals. Unroutable ``mandatory`` messages come back (``basic.return``
  precedes the confirm) and are returned from that same ``publish``. With ``confirms=False`` a publish
  returns once written (no guarantee); returns then arrive later and are handed back by the channel's
  *next* ``publish``.
* **channel errors** (404, 405, 406, 403...) raise the mapped exception and close the AMQP channel, as the
  broker does; the :class:`AmqpChannel` object stays usable: its next operation opens a fresh AMQP
  channel (same id) and re-applies its ``qos``. Consumers of the closed channel are gone with it (the
  library must consume again), and its unacked deliveries were requeued by the broker: settling one of
  them later is ignored with a warning. A refusal of an asynchronous command (a publish to a missing
  exchange without confirms) is raised by the channel's next operation.
* **deliveries** for every consumer of the connection are queued as they arrive and handed out by
  ``drain``; prefetch (``qos``) bounds how many are unacked.
* **acks** are coalesced: ``ack`` records the tag and returns; the channel's pending acks go out together
  in one write (one ``basic.ack`` with ``multiple`` for a run of tags when every older tag of the channel
  is settled, else one frame each) when 64 (or half the prefetch) are pending, before ``drain`` waits,
  before any other command on the connection (so wire order is exactly call order: an ack then a reject
  reach the broker in that order), and at channel or connection close. An ack not yet written when the
  process dies or the connection drops is lost, so that message is redelivered (at-least-once).
* **connection loss** (socket error, missed heartbeats, a broker-side close) fails every waiting call at
  once with :class:`~kelp.exceptions.ConnectionError` and is logged; ``Connection.ensure`` reconnects.
  Unacked deliveries go back to their queues on the broker, flagged redelivered; unconfirmed publishes stay
  in the outbox for the library to publish again.
* **connection.blocked** (a resource alarm) makes publishers wait instead of piling bytes into a socket
  the broker no longer reads; every wait of a publish (for the alarm to clear, for room in the outbox, for
  its confirms) and of ``flush`` gives up after ``blocked_timeout`` with OperationalError, the first
  publish after the alarm included (the broker announces the block only once it sees that publish).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from kelp import amqp
from kelp._envelope import Delivery
from kelp.aio.transport._amqp_channel import AmqpChannel
from kelp.aio.transport._amqp_common import (
    _EPOCH_SHIFT,
    _nothing,
    _Reply,
    _text,
)
from kelp.aio.transport._amqp_wire import AmqpWire
from kelp.aio.transport.base import DEFAULT_IMPLEMENTS, Implements, kelp_version
from kelp.exceptions import (
    ChannelError,
    ConnectionError,
    ConsumerCancelled,
    OperationalError,
)
from kelp.routing import EXCHANGE_TYPES, PassThroughTypes

__all__ = ["AmqpChannel", "AmqpTransport"]

logger = logging.getLogger("kelp.transport.amqp")


class AmqpTransport(AmqpWire):
    """One AMQP 0-9-1 connection to RabbitMQ (see the module docstring): its lifecycle and channels,
    over :class:`~kelp.aio.transport._amqp_wire.AmqpWire` (commands, replies, confirms, events)."""

    schemes: ClassVar[tuple[str, ...]] = ("amqp", "amqps")
    connection_errors: ClassVar[tuple[type[BaseException], ...]] = (OperationalError, OSError)
    channel_errors: ClassVar[tuple[type[BaseException], ...]] = (ChannelError,)
    native_routing: ClassVar[bool] = True
    query_options: ClassVar[frozenset[str] | None] = frozenset(
        {
            "confirms",
            "confirm_publish",
            "max_unconfirmed",
            "max_unconfirmed_bytes",
            "heartbeat",
            "reply_timeout",
            "blocked_timeout",
            "frame_max",
            "channel_max",
        }
    )

    driver_type: ClassVar[str] = "amqp"
    driver_name: ClassVar[str] = "kelp.amqp"
    # RabbitMQ routes: a type kelp does not know (a plugin's x-...) is passed through for the node to judge.
    implements: ClassVar[Implements] = DEFAULT_IMPLEMENTS.extend(
        heartbeats=True, exchange_type=PassThroughTypes(EXCHANGE_TYPES), delayed_delivery=True
    )

    def driver_version(self) -> str:
        return kelp_version()

    def qos_semantics_matches_spec(self, connection: Any) -> bool:
        """RabbitMQ 3.3 to 3.x limits each consumer (not the channel) with a non-global prefetch; older
        and 4.0 and later servers follow the specification, as any other broker is assumed to."""
        properties = self._core.server_properties
        if _text(properties.get("product")) != "RabbitMQ":
            return True
        digits = re.findall(r"\d+", _text(properties.get("version")))[:2]
        if len(digits) < 2:
            return True
        version = (int(digits[0]), int(digits[1]))
        return version < (3, 3) or version >= (4, 0)

    # -- connection -----------------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._lost is None and self._core.is_open and not self._closing

    def _ssl_context(self) -> ssl.SSLContext | None:
        option = self.options.get("ssl")
        if isinstance(option, ssl.SSLContext):
            return option
        if option or self.url.transport == "amqps":
            context = ssl.create_default_context()
            if isinstance(option, Mapping):
                if option.get("cafile"):
                    context.load_verify_locations(option["cafile"])
                if option.get("certfile"):
                    context.load_cert_chain(option["certfile"], option.get("keyfile"))
                if option.get("cert_reqs") == ssl.CERT_NONE:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            return context
        return None

    async def connect(self, timeout: float | None) -> None:
        host = self.url.hostname or "localhost"
        port = self.url.port or (5671 if self.url.transport == "amqps" else 5672)
        where = f"{host}:{port}"
        try:
            await self._driver.connect(host, port, self._ssl_context(), host, timeout)
        except OSError as exc:  # ssl.SSLError included
            await self._driver.close()
            raise ConnectionError(f"cannot connect to AMQP broker at {where}: {exc}") from exc
        opened = await self._driver.wait_for(lambda: self._core.is_open or self._lost, timeout)
        if self._lost is not None:
            await self._driver.close()
            raise self._lost
        if not opened:
            await self._driver.close()
            raise ConnectionError(f"AMQP handshake with {where} did not finish within {timeout} s")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._lost is None and self._core.is_open:
            try:
                await self._driver.send(lambda: self._pending_acks(self._core) + self._core.close())
                await self._driver.wait_for(
                    lambda: self._core.state is amqp.ConnectionState.CLOSED or self._driver.error, 5.0
                )
            except (OSError, amqp.ProtocolError):
                pass
        await self._driver.close()
        if self._lost is None:
            self._lost = OperationalError("the AMQP connection was closed")
        self._channels.clear()

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "server_properties": dict(self._core.server_properties),
            "heartbeat": self._core.heartbeat_interval,
            "frame_max": self._core.frame_max,
            "confirms": self.confirms,
            "confirm_publish": self.confirm_publish,
            "max_unconfirmed": self.max_unconfirmed,
            "max_unconfirmed_bytes": self.max_unconfirmed_bytes,
            "unconfirmed": self._outbox.count,
        }

    # -- channels -------------------------------------------------------------------------------------------

    async def open_channel(self) -> AmqpChannel:
        ids: list[int] = []

        def produce(core: amqp.Connection) -> bytes:
            channel_id, data = core.open_channel()
            ids.append(channel_id)
            self._replies[channel_id] = deque([reply])
            return data

        reply = _Reply()
        await self._send(produce)
        channel = AmqpChannel(self, ids[0])
        self._channels[channel.channel_id] = channel
        await self._result(reply)
        return channel

    async def _reopen(self, channel: AmqpChannel) -> None:
        reply = _Reply()

        def produce(core: amqp.Connection) -> bytes:
            _, data = core.open_channel(channel.channel_id)
            self._replies[channel.channel_id] = deque([reply])
            return data

        await self._send(produce)
        await self._result(reply)
        channel._acks.clear()
        channel._floor = 0
        channel._settled.clear()
        channel.is_open = True
        channel._epoch += 1
        logger.info("reopened AMQP channel %d after the broker closed it", channel.channel_id)
        if channel._qos is not None:
            prefetch, global_ = channel._qos
            await self._request(channel, lambda c, ch: c.basic_qos(ch, prefetch, global_qos=global_))

    # -- deliveries -----------------------------------------------------------------------------------------

    async def drain(self, timeout: float | None) -> list[Delivery]:
        deliveries = self._deliveries
        if not deliveries:
            if self._lost is None and any(channel._acks for channel in list(self._channels.values())):
                await self._send(_nothing)  # let the broker refill the prefetch windows while we wait
            await self._driver.wait_for(lambda: deliveries or self._cancelled or self._lost, timeout)
        out = []
        channels = self._channels
        while deliveries:
            delivery = deliveries.popleft()
            channel = channels.get(delivery.channel_id)
            if (
                channel is not None
                and channel.is_open
                and delivery.delivery_tag >> _EPOCH_SHIFT == channel._epoch
            ):
                out.append(delivery)
        if out:
            return out
        self._check()
        while self._cancelled:
            channel_id, tag, queue = self._cancelled.popleft()
            channel = channels.get(channel_id)
            if channel is not None and channel.is_open:
                raise ConsumerCancelled(
                    f"the broker cancelled consumer {tag} of queue '{queue}' (deleted?)", tag, channel_id
                )
        raise TimeoutError("no message arrived within the timeout")
