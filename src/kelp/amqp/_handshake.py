"""The connection-level half of the incoming side of :class:`~._connection.Connection`: methods on channel 0.

The handshake (``start`` -> ``start-ok``, ``tune`` -> ``tune-ok`` + ``open``, ``open-ok``), the broker's
``close`` and our close's ``close-ok``, ``blocked``/``unblocked``, and the end of the stream (EOF). Each
incoming method moves the connection state by the table in :mod:`._state`, queues the replies the protocol
requires and appends the events the driver reads.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ._channel import Channel
from ._errors import RemoteProtocolError, ReplyCode
from ._events import (
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionUnblocked,
    Event,
)
from ._fields import FieldValue
from ._frames import (
    FRAME_MIN_SIZE,
    FrameReader,
)
from ._spec import (
    decode_method,
)
from ._state import (
    CONNECTION_DISCARDING,
    CONNECTION_INCOMING,
    ConnectionState,
)

__all__ = ["Handshake"]

_DEFAULT_CAPABILITIES: dict[str, FieldValue] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class Handshake:
    """Mixin of :class:`~._connection.Connection`: what it does with the methods received on channel 0."""

    _username: str
    _password: str
    _vhost: str
    _want_heartbeat: int | None
    _want_frame_max: int
    _want_channel_max: int
    _mechanism: str
    _locale: str
    _client_properties: dict[str, FieldValue]
    _state: ConnectionState
    _reader: FrameReader
    _events: deque[Event]
    _channels: dict[int, Channel]
    _error: RemoteProtocolError | None
    _close_reason: tuple[int, str, int, int]
    frame_max: int
    channel_max: int
    heartbeat_interval: int
    server_properties: dict[str, FieldValue]

    def _reply(self, channel: int, name: str, args: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._state = ConnectionState.FAILED
        self._error = exc
        self._channels.clear()

    def _eof(self) -> None:
        state = self._state
        if state is ConnectionState.CLOSED:
            return
        if state is ConnectionState.CLOSING:  # the broker dropped the link instead of sending close-ok
            self._state = ConnectionState.CLOSED
            self._events.append(ConnectionClosed(*self._close_reason, by_peer=False))
            return
        if state is ConnectionState.AWAIT_TUNE:
            self._fail(
                RemoteProtocolError(
                    "the server closed the connection during authentication (bad credentials?)",
                    ReplyCode.ACCESS_REFUSED,
                )
            )
            return
        self._fail(
            RemoteProtocolError(
                f"the server closed the connection (state {state})", ReplyCode.CONNECTION_FORCED
            )
        )

    def _connection_method(self, payload: bytes) -> None:
        method, args = decode_method(payload)
        name = method.name
        next_state = CONNECTION_INCOMING.get((self._state, name))
        if next_state is None:
            if self._state in CONNECTION_DISCARDING:
                return
            raise RemoteProtocolError(
                f"unexpected {name} on channel 0 while the connection is {self._state}",
                ReplyCode.UNEXPECTED_FRAME,
            )
        self._state = next_state
        _CONNECTION_HANDLERS[name](self, args)

    def _on_start(self, args: tuple[Any, ...]) -> None:
        major, minor, server_properties, mechanisms, _locales = args
        if (major, minor) != (0, 9):
            raise RemoteProtocolError(
                f"server speaks AMQP {major}-{minor}, not 0-9-1", ReplyCode.NOT_IMPLEMENTED
            )
        offered = mechanisms.decode("utf-8", "replace").split()
        if self._mechanism not in offered:
            raise RemoteProtocolError(
                f"server offers auth mechanisms {offered}, not {self._mechanism}", ReplyCode.ACCESS_REFUSED
            )
        self.server_properties = server_properties
        if self._mechanism == "PLAIN":
            response = b"\x00" + self._username.encode() + b"\x00" + self._password.encode()
        else:
            response = b""
        self._reply(
            0, "connection.start-ok", (self._client_properties, self._mechanism, response, self._locale)
        )

    def _on_tune(self, args: tuple[Any, ...]) -> None:
        server_channel_max, server_frame_max, server_heartbeat = args
        channel_max = _lower_nonzero(self._want_channel_max, server_channel_max)
        frame_max = _lower_nonzero(self._want_frame_max, server_frame_max)
        if frame_max < FRAME_MIN_SIZE:
            raise RemoteProtocolError(
                f"server proposed frame_max {frame_max} < {FRAME_MIN_SIZE}", ReplyCode.SYNTAX_ERROR
            )
        want = self._want_heartbeat
        if want is None:
            heartbeat = server_heartbeat
        elif want == 0:
            heartbeat = 0
        else:
            heartbeat = _lower_nonzero(want, server_heartbeat)
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat_interval = heartbeat
        self._reader.max_frame = frame_max
        self._reply(0, "connection.tune-ok", (channel_max, frame_max, heartbeat))
        self._reply(0, "connection.open", (self._vhost, "", False))

    def _on_open_ok(self, args: tuple[Any, ...]) -> None:
        opened = ConnectionOpened(
            self.frame_max, self.channel_max, self.heartbeat_interval, self.server_properties
        )
        self._events.append(opened)

    def _on_close(self, args: tuple[Any, ...]) -> None:
        self._reply(0, "connection.close-ok", ())
        self._channels.clear()
        code, text, class_id, method_id = args
        self._events.append(ConnectionClosed(code, text, class_id, method_id, by_peer=True))

    def _on_close_ok(self, args: tuple[Any, ...]) -> None:
        self._channels.clear()
        self._events.append(ConnectionClosed(*self._close_reason, by_peer=False))

    def _on_blocked(self, args: tuple[Any, ...]) -> None:
        self._events.append(ConnectionBlocked(args[0]))

    def _on_unblocked(self, args: tuple[Any, ...]) -> None:
        self._events.append(ConnectionUnblocked())


_ConnectionHandler = Callable[[Handshake, tuple[Any, ...]], None]

_CONNECTION_HANDLERS: dict[str, _ConnectionHandler] = {
    "connection.start": Handshake._on_start,
    "connection.tune": Handshake._on_tune,
    "connection.open-ok": Handshake._on_open_ok,
    "connection.close": Handshake._on_close,
    "connection.close-ok": Handshake._on_close_ok,
    "connection.blocked": Handshake._on_blocked,
    "connection.unblocked": Handshake._on_unblocked,
}


def _lower_nonzero(ours: int, theirs: int) -> int:
    """Negotiate a limit where 0 means "no limit": the lower of the non-zero values."""
    if not theirs:
        return ours
    if not ours:
        return theirs
    return min(ours, theirs)


def _merge_client_properties(extra: Mapping[str, FieldValue] | None) -> dict[str, FieldValue]:
    props: dict[str, FieldValue] = {
        "product": "kelp",
        "platform": f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
        "capabilities": dict(_DEFAULT_CAPABILITIES),
    }
    if extra:
        for key, value in extra.items():
            if key == "capabilities" and isinstance(value, Mapping):
                props["capabilities"] = {**_DEFAULT_CAPABILITIES, **value}
            else:
                props[key] = value
    return props
