"""Every state transition of the AMQP client, as data.

Two tables per level (connection, channel): what an *incoming* method does to the state, and what a
*command* we send does.  A pair missing from a table is a protocol violation: by the peer
(:class:`RemoteProtocolError`) for incoming methods, by the caller (:class:`LocalProtocolError`) for
commands.  States in ``*_DISCARDING`` silently drop what is not in the table instead, as the spec demands
of a peer that has sent ``close`` and waits for ``close-ok``.
"""

from __future__ import annotations

import enum

__all__ = [
    "CHANNEL_COMMANDS",
    "CHANNEL_DISCARDING",
    "CHANNEL_INCOMING",
    "CONNECTION_COMMANDS",
    "CONNECTION_DISCARDING",
    "CONNECTION_INCOMING",
    "TRACKED_REPLIES",
    "ChannelState",
    "ConnectionState",
]


class ConnectionState(enum.StrEnum):
    INIT = "INIT"  # nothing sent yet
    AWAIT_START = "AWAIT_START"  # protocol header sent
    AWAIT_TUNE = "AWAIT_TUNE"  # start-ok sent
    AWAIT_OPEN_OK = "AWAIT_OPEN_OK"  # tune-ok + open sent
    OPEN = "OPEN"
    CLOSING = "CLOSING"  # we sent connection.close
    CLOSED = "CLOSED"
    FAILED = "FAILED"  # the peer broke the protocol


class ChannelState(enum.StrEnum):
    OPENING = "OPENING"  # channel.open sent
    OPEN = "OPEN"
    CLOSING = "CLOSING"  # we sent channel.close
    CLOSED = "CLOSED"  # gone: the id is free


_C = ConnectionState
_H = ChannelState

# (state, incoming method on channel 0) -> next state
CONNECTION_INCOMING: dict[tuple[ConnectionState, str], ConnectionState] = {
    (_C.AWAIT_START, "connection.start"): _C.AWAIT_TUNE,
    (_C.AWAIT_TUNE, "connection.tune"): _C.AWAIT_OPEN_OK,
    (_C.AWAIT_TUNE, "connection.close"): _C.CLOSED,  # e.g. ACCESS_REFUSED: bad credentials
    (_C.AWAIT_OPEN_OK, "connection.open-ok"): _C.OPEN,
    (_C.AWAIT_OPEN_OK, "connection.close"): _C.CLOSED,  # e.g. NOT_ALLOWED: no such vhost
    (_C.OPEN, "connection.close"): _C.CLOSED,
    (_C.OPEN, "connection.blocked"): _C.OPEN,
    (_C.OPEN, "connection.unblocked"): _C.OPEN,
    (_C.CLOSING, "connection.close"): _C.CLOSED,  # both sides closed at once
    (_C.CLOSING, "connection.close-ok"): _C.CLOSED,
}
CONNECTION_DISCARDING = frozenset({_C.CLOSING, _C.CLOSED})

# (state, command we send) -> next state
CONNECTION_COMMANDS: dict[tuple[ConnectionState, str], ConnectionState] = {
    (_C.INIT, "protocol-header"): _C.AWAIT_START,
    (_C.AWAIT_OPEN_OK, "connection.close"): _C.CLOSING,
    (_C.OPEN, "connection.close"): _C.CLOSING,
    (_C.OPEN, "channel.open"): _C.OPEN,
    (_C.AWAIT_OPEN_OK, "heartbeat"): _C.AWAIT_OPEN_OK,
    (_C.OPEN, "heartbeat"): _C.OPEN,
    (_C.CLOSING, "heartbeat"): _C.CLOSING,
}

# Methods a server may send on an open channel that leave it open.
_OPEN_CHANNEL_INCOMING = (
    "channel.flow",
    "channel.flow-ok",
    "exchange.declare-ok",
    "exchange.delete-ok",
    "exchange.bind-ok",
    "exchange.unbind-ok",
    "queue.declare-ok",
    "queue.bind-ok",
    "queue.unbind-ok",
    "queue.purge-ok",
    "queue.delete-ok",
    "basic.qos-ok",
    "basic.consume-ok",
    "basic.cancel-ok",
    "basic.cancel",  # server-side consumer cancellation
    "basic.deliver",
    "basic.return",
    "basic.get-ok",
    "basic.get-empty",
    "basic.ack",  # publisher confirms
    "basic.nack",
    "basic.recover-ok",
    "confirm.select-ok",
    "tx.select-ok",
    "tx.commit-ok",
    "tx.rollback-ok",
)

# (state, incoming method on a channel) -> next state
CHANNEL_INCOMING: dict[tuple[ChannelState, str], ChannelState] = {
    (_H.OPENING, "channel.open-ok"): _H.OPEN,
    (_H.OPENING, "channel.close"): _H.CLOSED,  # refused, e.g. channel_max exceeded
    (_H.OPEN, "channel.close"): _H.CLOSED,
    (_H.CLOSING, "channel.close"): _H.CLOSING,  # both closed at once: answer, keep waiting for close-ok
    (_H.CLOSING, "channel.close-ok"): _H.CLOSED,
    **{(_H.OPEN, name): _H.OPEN for name in _OPEN_CHANNEL_INCOMING},
}
CHANNEL_DISCARDING = frozenset({_H.CLOSING})

# Replies matched against the per-channel FIFO of outstanding synchronous requests.
TRACKED_REPLIES = frozenset(name for name in _OPEN_CHANNEL_INCOMING if name.endswith("-ok")) | {
    "basic.get-empty"
}

# Methods we may send on an open channel that leave it open.
_OPEN_CHANNEL_COMMANDS = (
    "channel.flow",
    "exchange.declare",
    "exchange.delete",
    "exchange.bind",
    "exchange.unbind",
    "queue.declare",
    "queue.bind",
    "queue.unbind",
    "queue.purge",
    "queue.delete",
    "basic.qos",
    "basic.consume",
    "basic.cancel",
    "basic.publish",
    "basic.get",
    "basic.ack",
    "basic.reject",
    "basic.nack",
    "basic.recover",
    "confirm.select",
    "tx.select",
    "tx.commit",
    "tx.rollback",
)

# (state, command we send on a channel) -> next state
CHANNEL_COMMANDS: dict[tuple[ChannelState, str], ChannelState] = {
    (_H.OPEN, "channel.close"): _H.CLOSING,
    **{(_H.OPEN, name): _H.OPEN for name in _OPEN_CHANNEL_COMMANDS},
}
