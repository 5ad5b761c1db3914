"""Delayed messages on RabbitMQ: held by the broker, in one of two ways chosen once per connection.

* **The plugin**: when the node has ``rabbitmq_delayed_message_exchange`` (checked once per node by each
  process, on a short-lived connection), a delayed message is published
  to the durable exchange ``kelp.delayed`` (type ``x-delayed-message``, routing like ``headers``) with an
  ``x-delay`` header; the plugin holds it and routes it when due.
* **TTL tiers** otherwise: a fixed set of durable queues ``kelp.delay.<k>`` (k = 0..27), each holding its
  messages ``2**k`` steps of 1/8 s (``x-message-ttl``) before dead-lettering them to the next lower tier's
  exchange. The delay, rounded up to whole steps, is written in binary in the headers ``kelp-delay-<k>``
  ("1"/"0"); each tier's ``headers`` exchange sends a message with its bit set into its queue and the
  others straight down. A message goes through each tier once, so it is never early, and late by less
  than one step plus a few ms per tier it waits in. The tiers are declared once per vhost (the top
  tier's exchange, declared last, marks them done).

Both end at an exchange of type ``headers`` (``kelp.delayed`` or ``kelp.delay.deliver``) bound, once per
target, to the message's own exchange (or, for the default exchange, to its queue) on the header
``kelp-delay-to``: the message arrives there with its original routing key and is routed by the bindings
of that moment. The queue's TTL counts from then. A message carrying its own ``expiration`` cannot wait
in a TTL tier (the lower TTL would win): the tiers refuse it with UsageError. Neither way can cancel a
held message or count them per queue.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from kelp._envelope import Envelope
from kelp.aio.transport.base import Transport, TransportChannel
from kelp.exceptions import KelpError, UsageError

__all__ = ["Delays", "tier_route"]

logger = logging.getLogger("kelp.transport.amqp")

#: The smallest step of delay the tiers hold (ms): the most a message can be late by rounding.
STEP_MS = 125
#: Tiers 0..LEVELS-1 hold up to 2**LEVELS - 1 steps (about 388 days).
LEVELS = 28
PLUGIN_EXCHANGE = "kelp.delayed"
DELIVER_EXCHANGE = "kelp.delay.deliver"
TARGET_HEADER = "kelp-delay-to"


def tier_name(level: int) -> str:
    """The tier's queue and exchange (two namespaces in AMQP: the same name for both)."""
    return f"kelp.delay.{level}"


def bit_header(level: int) -> str:
    return f"kelp-delay-{level}"


def tier_route(delay_ms: float) -> tuple[str, dict[str, str]]:
    """The exchange a message delayed ``delay_ms`` enters, and the headers that take it down the tiers."""
    steps = max(1, math.ceil(delay_ms / STEP_MS))
    if steps >= 2**LEVELS:
        raise UsageError(f"amqp:// cannot delay a message more than {(2**LEVELS - 1) * STEP_MS // 1000} s")
    top = steps.bit_length() - 1
    return tier_name(top), {bit_header(k): "1" if steps >> k & 1 else "0" for k in range(top + 1)}


def _target(envelope: Envelope) -> tuple[str, str]:
    """(kind, name) of what the message goes to when due: its exchange, or its queue (default exchange)."""
    if envelope.exchange:
        return "exchange", envelope.exchange
    return "queue", envelope.routing_key


#: Whether each node (host, port, vhost) has the plugin, as this process found out: the check opens a
#: connection, so it is made once per node (a plugin enabled later is used by the next process).
_plugin_known: dict[tuple[str | None, int | None, str | None], bool] = {}


class Delays:
    """One connection's way to hold delayed messages (checked on its first delayed publish)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._plugin: bool | None = None
        self._bound: set[tuple[str, str]] = set()

    @property
    def plugin(self) -> bool | None:
        """True: the plugin; False: TTL tiers; None: not checked yet."""
        return self._plugin

    async def readdress(self, channel: TransportChannel, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """The batch with each delayed envelope addressed to the broker's holding place (its target bound
        there first); the others unchanged."""
        if self._plugin is None:
            url = self._transport.url
            node = (url.hostname, url.port, url.virtual_host)
            plugin = _plugin_known.get(node)
            if plugin is None:
                plugin = _plugin_known[node] = await self._check_plugin()
            if not plugin:
                await self._declare_tiers()
            self._plugin = plugin
        source = PLUGIN_EXCHANGE if self._plugin else DELIVER_EXCHANGE
        out = []
        now = time.time()
        for envelope in envelopes:
            if envelope.due is None:
                out.append(envelope)
                continue
            kind, name = _target(envelope)
            if (kind, name) not in self._bound:
                await channel.bind(
                    kind, name, source, "", {"x-match": "all", TARGET_HEADER: f"{kind}:{name}"}
                )
                self._bound.add((kind, name))
            delay_ms = max(0.0, (envelope.due - now) * 1000)
            headers = dict(envelope.headers)
            headers[TARGET_HEADER] = f"{kind}:{name}"
            if self._plugin:
                headers["x-delay"] = math.ceil(delay_ms)
                exchange = PLUGIN_EXCHANGE
            else:
                if envelope.properties.get("expiration") is not None:
                    raise UsageError(
                        "amqp:// holds delayed messages in TTL queues, where a message's own expiration "
                        "would cut the delay short: give the queue a message_ttl instead"
                    )
                exchange, bits = tier_route(delay_ms)
                headers.update(bits)
            out.append(Envelope(envelope.body, envelope.properties, headers, exchange, envelope.routing_key))
        return out

    async def _check_plugin(self) -> bool:
        """Whether the node has the delayed-message plugin: declare its exchange on a connection of our
        own, since an unknown exchange type makes RabbitMQ close the whole connection."""
        probe = type(self._transport)(self._transport.url, self._transport.options)
        probe.probing = True  # type: ignore[attr-defined]
        try:
            await probe.connect(10.0)
            channel = await probe.open_channel()
            await channel.declare_exchange(
                PLUGIN_EXCHANGE, "x-delayed-message", True, False, False, {"x-delayed-type": "headers"}, False
            )
            return True
        except KelpError as exc:
            logger.debug("no delayed-message plugin (%s): kelp's TTL tiers hold delayed messages", exc)
            return False
        finally:
            try:
                await probe.close()
            except Exception:  # the broker may have closed it already
                pass

    async def _declare_tiers(self) -> None:
        """Declare the tiers unless this vhost has them (the top tier's exchange exists), on a channel of
        our own: a passive declare of a missing exchange closes its channel."""
        channel = await self._transport.open_channel()
        try:
            try:
                await channel.declare_exchange(
                    tier_name(LEVELS - 1), "headers", True, False, False, None, True
                )
                return
            except KelpError:
                pass
            await channel.declare_exchange(DELIVER_EXCHANGE, "headers", True, False, False, None, False)
            for level in range(LEVELS):  # each tier after the one it dead-letters to
                name = tier_name(level)
                below = tier_name(level - 1) if level else DELIVER_EXCHANGE
                await channel.declare_exchange(name, "headers", True, False, False, None, False)
                arguments: dict[str, Any] = {
                    "x-message-ttl": STEP_MS << level,
                    "x-dead-letter-exchange": below,
                }
                await channel.declare_queue(name, True, False, False, arguments, False)
                await channel.bind("queue", name, name, "", {"x-match": "all", bit_header(level): "1"})
                await channel.bind("exchange", below, name, "", {"x-match": "all", bit_header(level): "0"})
        finally:
            await channel.close()
