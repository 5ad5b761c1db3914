# Generated from src/kelp/aio/transport/_redis_consume.py by scripts/unasync.py; do not edit.
"""How a redis:// connection takes messages for its consumers: one script call claims, for every consumer,
at most its free prefetch window of ready messages (moving each entry into the group's pending list in the
same call, so none is ever neither queued nor pending), then waits with a bounded ``XREAD BLOCK`` until
something arrives or becomes due. Entries whose metadata kelp cannot read are quarantined: dead-lettered or
dropped with an ERROR log."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kelp._backend import monotonic
from kelp._broker.core.channel import Consumer
from kelp._broker.malformed import report_dropped
from kelp._envelope import Delivery
from kelp.transport._redis_common import (
    SERVER_TICK,
    WAIT_CAP,
    _flag,
    _mapped,
    _text,
)
from kelp.transport._redis_sender import RedisSender
from kelp.transport.base import queue_deleted

if TYPE_CHECKING:
    from kelp.transport._redis_channel import RedisChannel


class RedisConsuming(RedisSender):
    """Draining: claims for the consumers of every channel, and the wait between claims."""

    def wake(self) -> None:
        self._signal.set()

    def drain(self, timeout: float | None) -> list[Delivery]:
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            self._require()
            if self._cancelled:
                raise queue_deleted(*self._cancelled.pop(0))
            self._signal.clear()
            specs = self._claim_specs()
            watch: list[Any] = []
            if specs:
                deliveries, watch = self._claim(specs)
                if deliveries:
                    return deliveries
                if self._cancelled:
                    continue
            elif self.pending_acks or self._buffer:
                self.send_buffered()
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no message arrived within the timeout")
            wait = WAIT_CAP if remaining is None else min(remaining, WAIT_CAP)
            if self._next_sweep is not None:
                # Something becomes due (a delayed message, an expiry): claim again then, not later.
                # Redis ends a BLOCK only at its next server tick after the timeout (up to 100 ms
                # late), so the last stretch before the due time is slept here instead.
                until, self._next_sweep = self._next_sweep - monotonic(), None
                if until < wait:
                    if until <= SERVER_TICK:
                        self._signal.wait(max(0.0, until))
                        continue
                    wait = until - SERVER_TICK
            if watch:
                streams = dict(zip(watch[0::2], watch[1::2]))  # a queue consumed twice is watched once
                keys, ids = list(streams), list(streams.values())
                with _mapped():
                    self._require().execute_command(
                        "XREAD", "COUNT", 1, "BLOCK", max(1, int(wait * 1000)), "STREAMS", *keys, *ids
                    )
            else:
                self._signal.wait(wait)

    def _claim_specs(self) -> list[tuple[RedisChannel, Consumer, int]]:
        """``(channel, consumer, room)`` for every consumer. A full consumer is asked about too (room 0),
        as the answer says whether its queue still exists."""
        return [
            (channel, consumer, room)
            for channel in self._channels.values()
            for consumer, room in channel.state.rooms()
        ]

    def _claim(self, specs: list[tuple[RedisChannel, Consumer, int]]) -> tuple[list[Delivery], list[Any]]:
        args: list[Any] = []
        # A channel's global window: one room its consumers share, which the script takes from in turn.
        windows: dict[int, int] = {}  # channel id -> the window's number (from 1)
        rooms: list[int] = []
        for index, (channel, consumer, room) in enumerate(specs):
            window = 0
            if channel.state.prefetch_global:
                window = windows.get(channel.channel_id, 0)
                if not window:
                    rooms.append(channel.state.global_room())
                    window = windows[channel.channel_id] = len(rooms)
            args += (consumer.queue, room, _flag(consumer.no_ack), index, window, channel._key(consumer.tag))
        result = self.call("claim", self.connection_id, len(specs), *args, len(rooms), *rooms)
        deliveries: list[Delivery] = []
        watch: list[Any] = []
        i, end = 1, len(result)
        while i < end:
            item = result[i]
            if item == b"watch":
                next_ms = int(result[i + 1])
                if next_ms >= 0:
                    self._next_sweep = monotonic() + next_ms / 1000
                watch = result[i + 2 :]
                break
            if item == b"gone":  # the queue was deleted: cancel the consumer, as RabbitMQ's basic.cancel
                channel, consumer, _ = specs[int(result[i + 1])]
                if channel.state.consumers.pop(consumer.tag, None) is not None:
                    self._cancelled.append((channel.channel_id, consumer.tag, consumer.queue))
                i += 2
                continue
            channel, consumer, _ = specs[int(item)]
            _, suffix, entry_id, body, meta, count = result[i : i + 6]
            delivery = channel._deliver(
                consumer, consumer.queue, _text(suffix), entry_id, body, meta, count, consumer.no_ack
            )
            if delivery is not None:
                deliveries.append(delivery)
            i += 6
        if self.malformed:
            self.quarantine()
        if result[0]:
            self.flush_outbox()
        return deliveries, watch

    def quarantine(self) -> None:
        """Take the malformed entries this connection claimed out of their queues: rejected without
        requeue, so the script dead-letters them when the queue has a dead-letter exchange (the outbox
        then routes them as kelp._broker.malformed says); otherwise dropped with an ERROR log."""
        items, self.malformed = self.malformed, []
        client = self._require()
        store = f"redis prefix {self.prefix!r}"
        args: list[Any] = []
        for queue, suffix, entry_id, no_ack, problem in items:
            if no_ack:
                report_dropped(store, queue, _text(entry_id), problem, "it was delivered with no_ack")
                continue
            with _mapped():
                dlx = client.execute_command("HGET", f"{self._key}q:{queue}", "dlx")
            if dlx is None:
                report_dropped(store, queue, _text(entry_id), problem)
            args += (queue, suffix, entry_id)
        if args:
            outbox = self.call("settle", self.connection_id, "0", len(args) // 3, *args)
            if outbox:
                self.flush_outbox()
