"""The channel-level half of the incoming side of :class:`~._connection.Connection`: methods on channels 1+.

Deliveries and publisher confirms take a hot path; every other method moves its channel's state by the
table in :mod:`._state`, is matched against the replies the channel owes (an unsolicited reply is a
protocol error), and becomes an event for the driver (``channel.close`` and ``channel.flow`` are answered
here; ``basic.deliver``, ``basic.get-ok`` and ``basic.return`` start collecting a message's content).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ._channel import AWAIT_HEADER, DELIVER, GET_OK, RETURN, Channel
from ._errors import RemoteProtocolError, ReplyCode
from ._events import (
    REPLY_EVENTS,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConsumerCancelled,
    Event,
)
from ._spec import (
    decode_basic_ack,
    decode_basic_deliver,
    decode_method,
)
from ._state import (
    CHANNEL_DISCARDING,
    CHANNEL_INCOMING,
    CONNECTION_DISCARDING,
    TRACKED_REPLIES,
    ChannelState,
    ConnectionState,
)

__all__ = ["ChannelIncoming"]

_DELIVER_ID = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
_ACK_ID = b"\x00\x3c\x00\x50"  # class 60, method 80 (ack)
_OPEN = ChannelState.OPEN
_CLOSING = ChannelState.CLOSING


class ChannelIncoming:
    """Mixin of :class:`~._connection.Connection`: what it does with the methods received on channels."""

    _state: ConnectionState
    _events: deque[Event]
    _channels: dict[int, Channel]

    def _reply(self, channel: int, name: str, args: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _channel_method(self, channel: int, payload: bytes) -> None:
        ch = self._channels.get(channel)
        if ch is None:
            if self._state in CONNECTION_DISCARDING:
                return
            raise RemoteProtocolError(
                f"method frame on channel {channel}, which is not open", ReplyCode.CHANNEL_ERROR
            )
        if ch.awaiting:
            raise RemoteProtocolError(
                f"method frame on channel {channel} in the middle of a message's content",
                ReplyCode.UNEXPECTED_FRAME,
            )
        if ch.state is _OPEN:
            # hot paths, equivalent to the table entries (OPEN, basic.deliver/basic.ack) -> OPEN
            key = payload[:4]
            if key == _DELIVER_ID:
                ch.content_args = decode_basic_deliver(payload)
                ch.content_kind = DELIVER
                ch.awaiting = AWAIT_HEADER
                return
            if key == _ACK_ID:
                tag, multiple = decode_basic_ack(payload)
                confirmed = ch.settle(tag, multiple, True)
                if confirmed is not None:
                    self._events.append(confirmed)
                return
        method, args = decode_method(payload)
        name = method.name
        next_state = CHANNEL_INCOMING.get((ch.state, name))
        if next_state is None:
            if ch.state in CHANNEL_DISCARDING:
                return
            raise RemoteProtocolError(
                f"unexpected {name} on channel {channel}, which is {ch.state}", ReplyCode.UNEXPECTED_FRAME
            )
        if name in TRACKED_REPLIES:
            if not ch.expected or name not in ch.expected[0]:
                owed = ch.expected[0] if ch.expected else "nothing"
                raise RemoteProtocolError(
                    f"unsolicited {name} on channel {channel} (awaiting {owed})", ReplyCode.UNEXPECTED_FRAME
                )
            ch.expected.popleft()
        previous = ch.state
        ch.state = next_state
        if next_state is ChannelState.CLOSED:
            del self._channels[channel]
        handler = _CHANNEL_HANDLERS.get(name)
        if handler is not None:
            handler(self, ch, previous, args)
        else:
            event_type, with_args = REPLY_EVENTS[name]
            self._events.append(event_type(channel, *args) if with_args else event_type(channel))

    def _on_channel_open_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._events.append(ChannelOpened(ch.id))

    def _on_channel_close(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._reply(ch.id, "channel.close-ok", ())
        if previous is _CLOSING:
            ch.close_reason = args  # report the server's reason once our close is acknowledged
            return
        code, text, class_id, method_id = args
        self._events.append(ChannelClosed(ch.id, code, text, class_id, method_id, by_peer=True))

    def _on_channel_close_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        if ch.close_reason is not None:
            self._events.append(ChannelClosed(ch.id, *ch.close_reason, by_peer=True))
        else:
            self._events.append(ChannelClosed(ch.id, 200, "", 0, 0, by_peer=False))

    def _on_channel_flow(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        self._reply(ch.id, "channel.flow-ok", args)
        self._events.append(ChannelFlow(ch.id, args[0]))

    def _on_basic_cancel(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        consumer_tag, nowait = args
        if not nowait:
            self._reply(ch.id, "basic.cancel-ok", (consumer_tag,))
        self._events.append(ConsumerCancelled(ch.id, consumer_tag))

    def _on_get_ok(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(GET_OK, args)

    def _on_return(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(RETURN, args)

    def _on_deliver(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        ch.begin_content(DELIVER, args)  # normally taken by the hot path in _channel_method

    def _on_confirm(self, ch: Channel, previous: ChannelState, args: tuple[Any, ...]) -> None:
        confirmed = ch.settle(args[0], args[1], len(args) == 2)  # basic.ack has 2 fields, basic.nack 3
        if confirmed is not None:
            self._events.append(confirmed)


_ChannelHandler = Callable[[ChannelIncoming, Channel, ChannelState, tuple[Any, ...]], None]

_CHANNEL_HANDLERS: dict[str, _ChannelHandler] = {
    "channel.open-ok": ChannelIncoming._on_channel_open_ok,
    "channel.close": ChannelIncoming._on_channel_close,
    "channel.close-ok": ChannelIncoming._on_channel_close_ok,
    "channel.flow": ChannelIncoming._on_channel_flow,
    "basic.cancel": ChannelIncoming._on_basic_cancel,
    "basic.deliver": ChannelIncoming._on_deliver,
    "basic.get-ok": ChannelIncoming._on_get_ok,
    "basic.return": ChannelIncoming._on_return,
    "basic.ack": ChannelIncoming._on_confirm,
    "basic.nack": ChannelIncoming._on_confirm,
}
