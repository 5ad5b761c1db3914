"""The client side of an AMQP 0-9-1 connection as a sans-IO state machine.

Feed received bytes to :meth:`Connection.receive_data`, then drain :meth:`Connection.next_event`.  Commands
(``basic_publish``, ``queue_declare``...) return the bytes to write.  Replies the protocol requires of us
(``start-ok``, ``tune-ok``, ``close-ok``, ``flow-ok``...) are produced by the core itself and wait in
:meth:`Connection.data_to_send`; every command's return value starts with whatever was still waiting there,
so writing command results in order always keeps the wire in order.

The core never reads a clock: heartbeat deadlines are computed from timestamps the driver passes in.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from ._channel import Channel
from ._commands import Commands
from ._errors import LocalProtocolError, RemoteProtocolError, ReplyCode
from ._events import (
    Event,
    Heartbeat,
)
from ._fields import FieldValue
from ._frames import (
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    FrameReader,
    encode_frame,
    encode_publish,
)
from ._handshake import Handshake, _merge_client_properties
from ._incoming import ChannelIncoming
from ._properties import BasicProperties
from ._spec import (
    METHODS_BY_NAME,
    encode_basic_ack,
    encode_method,
)
from ._state import (
    CHANNEL_COMMANDS,
    CONNECTION_COMMANDS,
    CONNECTION_DISCARDING,
    ChannelState,
    ConnectionState,
)

__all__ = ["Connection"]

_OPEN = ChannelState.OPEN
_CLOSING = ChannelState.CLOSING

#: Largest message body accepted by default (RabbitMQ's own hard ceiling is 512 MiB).
DEFAULT_MAX_BODY_SIZE = 512 * 1024 * 1024


class Connection(Handshake, ChannelIncoming, Commands):
    """Client side of one AMQP 0-9-1 connection, with no I/O.

    Typical driver loop::

        conn = Connection("guest", "guest", "/")
        sock.sendall(conn.initiate())
        while True:
            conn.receive_data(sock.recv(65536), now=monotonic())
            sock.sendall(conn.data_to_send())
            while (event := conn.next_event()) is not None:
                handle(event)

    ``heartbeat``: ``None`` accepts the server's proposal, ``0`` disables heartbeats, ``n`` asks for ``n``
    seconds (the lower of the two non-zero values wins).  ``frame_max`` and ``channel_max`` are upper bounds;
    the negotiated values are the lower of ours and the server's (0 from the server means "no limit").
    ``max_body_size`` bounds the size of one incoming message, so a peer cannot make us buffer without limit.
    """

    def __init__(
        self,
        username: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        *,
        heartbeat: int | None = None,
        frame_max: int = 131072,
        channel_max: int = 2047,
        client_properties: Mapping[str, FieldValue] | None = None,
        auth_mechanism: Literal["PLAIN", "EXTERNAL"] = "PLAIN",
        locale: str = "en_US",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if not FRAME_MIN_SIZE <= frame_max <= 0xFFFFFFFF:
            raise LocalProtocolError(
                f"frame_max must be between {FRAME_MIN_SIZE} and 2**32-1, got {frame_max}"
            )
        if not 1 <= channel_max <= 0xFFFF:
            raise LocalProtocolError(f"channel_max must be between 1 and 65535, got {channel_max}")
        if heartbeat is not None and not 0 <= heartbeat <= 0xFFFF:
            raise LocalProtocolError(f"heartbeat must be between 0 and 65535 seconds, got {heartbeat}")
        if auth_mechanism not in ("PLAIN", "EXTERNAL"):
            raise LocalProtocolError(f"unsupported auth mechanism {auth_mechanism!r} (PLAIN or EXTERNAL)")
        self._username = username
        self._password = password
        self._vhost = vhost
        self._want_heartbeat = heartbeat
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        self._mechanism = auth_mechanism
        self._locale = locale
        self._max_body_size = max_body_size
        self._client_properties = _merge_client_properties(client_properties)

        self._state = ConnectionState.INIT
        self._reader = FrameReader(frame_max)
        self._events: deque[Event] = deque()
        self._pending: list[bytes] = []
        self._channels: dict[int, Channel] = {}
        self._next_channel = 1
        self._error: RemoteProtocolError | None = None
        self._close_reason: tuple[int, str, int, int] = (200, "", 0, 0)

        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat_interval = 0
        self.server_properties: dict[str, FieldValue] = {}
        self._last_sent: float | None = None
        self._last_received: float | None = None

    # -- introspection --------------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is ConnectionState.OPEN

    def channel_state(self, channel: int) -> ChannelState:
        """State of a channel; ``CLOSED`` for ids not in use."""
        ch = self._channels.get(channel)
        return ChannelState.CLOSED if ch is None else ch.state

    @property
    def open_channels(self) -> tuple[int, ...]:
        return tuple(ch.id for ch in self._channels.values() if ch.state is _OPEN)

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held back because they do not yet form a complete frame (< one ``frame_max``)."""
        return self._reader.buffered

    # -- input ----------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float | None = None) -> None:
        """Process bytes read from the transport; ``b""`` signals end of stream.

        Complete frames are parsed at once (only a partial frame is buffered) and their events queued for
        :meth:`next_event`.  If the bytes break the protocol, the events before the fault are still queued,
        the connection becomes ``FAILED`` and :meth:`next_event` raises :class:`RemoteProtocolError` once
        they are drained.  ``now`` (any monotonic clock, seconds) records when data arrived, for
        :meth:`peer_timed_out`.
        """
        if self._error is not None:
            raise self._error
        state = self._state
        if state is ConnectionState.INIT:
            raise LocalProtocolError("call initiate() and send its bytes before receiving data")
        if now is not None:
            self._last_received = now
        if not data:
            self._eof()
            return
        if state is ConnectionState.CLOSED:
            return  # the peer may still flush bytes after close-ok; nothing in them matters now
        frames = self._reader.feed(data if type(data) is bytes else bytes(data))
        channels = self._channels  # channels exist only while the connection is OPEN
        events = self._events
        try:
            for frame_type, channel, payload in frames:
                if frame_type == 1:  # method
                    if channel:
                        self._channel_method(channel, payload)
                    else:
                        self._connection_method(payload)
                        if self._state is ConnectionState.CLOSED:
                            return
                    continue
                ch = channels.get(channel)
                if ch is None or ch.state is _CLOSING or frame_type == FRAME_HEARTBEAT:
                    self._stray_frame(frame_type, channel, payload)
                    continue
                if frame_type == 3:  # body
                    event = ch.content_body(payload)
                else:  # content header
                    event = ch.content_header(payload, self._max_body_size)
                if event is not None:
                    events.append(event)
        except RemoteProtocolError as exc:
            self._fail(exc)
            return
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as exc:
            self._fail(RemoteProtocolError(f"malformed frame: {exc}", ReplyCode.FRAME_ERROR))
            return
        if self._reader.error is not None:
            self._fail(self._reader.error)

    def _stray_frame(self, frame_type: int, channel: int, payload: bytes) -> None:
        """A non-method frame outside an open channel: heartbeat, or content to discard or refuse."""
        if frame_type == FRAME_HEARTBEAT:
            if channel or payload:
                raise RemoteProtocolError("heartbeat frame with a channel or payload", ReplyCode.FRAME_ERROR)
            if self._state not in CONNECTION_DISCARDING:
                self._events.append(Heartbeat())
            return
        ch = self._channels.get(channel)
        if (ch is not None and ch.state is _CLOSING) or self._state in CONNECTION_DISCARDING:
            return  # we are closing: the spec says to discard what arrives meanwhile
        what = "content header" if frame_type == FRAME_HEADER else "content body"
        raise RemoteProtocolError(f"{what} on channel {channel}, which is not open", ReplyCode.CHANNEL_ERROR)

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more data is needed.

        Raises the :class:`RemoteProtocolError` that failed the connection once the events received before
        the fault have been returned.
        """
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def events(self) -> Iterator[Event]:
        """Iterate over the queued events (see :meth:`next_event`)."""
        while (event := self.next_event()) is not None:
            yield event

    def data_to_send(self) -> bytes:
        """Bytes the core produced on its own (handshake replies, ``close-ok``, ``flow-ok``); clears them."""
        if not self._pending:
            return b""
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    # -- heartbeats -----------------------------------------------------------------------------------------

    def note_sent(self, now: float) -> None:
        """Record that bytes were written to the transport at ``now``."""
        self._last_sent = now

    @property
    def last_sent(self) -> float | None:
        """When bytes were last written (as given to :meth:`note_sent`); None before the first write."""
        return self._last_sent

    def note_received(self, now: float) -> None:
        """Record that bytes arrived at ``now`` (same as passing ``now`` to :meth:`receive_data`)."""
        self._last_received = now

    def next_heartbeat_deadline(self) -> float | None:
        """When a heartbeat must be sent if nothing else is: half an interval after the last write."""
        if not self.heartbeat_interval or self._last_sent is None:
            return None
        return self._last_sent + self.heartbeat_interval / 2

    def needs_heartbeat(self, now: float) -> bool:
        deadline = self.next_heartbeat_deadline()
        return deadline is not None and now >= deadline

    def peer_deadline(self) -> float | None:
        """When the peer counts as dead: two heartbeat intervals after the last byte received."""
        if not self.heartbeat_interval or self._last_received is None:
            return None
        return self._last_received + 2 * self.heartbeat_interval

    def peer_timed_out(self, now: float) -> bool:
        deadline = self.peer_deadline()
        return deadline is not None and now > deadline

    def heartbeat(self) -> bytes:
        """A heartbeat frame (allowed once tuning is done)."""
        self._connection_command("heartbeat")
        return self._with_pending(HEARTBEAT_FRAME)

    # -- connection commands --------------------------------------------------------------------------------

    def initiate(self) -> bytes:
        """The protocol header that opens the conversation; the server answers with ``connection.start``."""
        self._connection_command("protocol-header")
        return PROTOCOL_HEADER

    def close(
        self, reply_code: int = 200, reply_text: str = "", class_id: int = 0, method_id: int = 0
    ) -> bytes:
        """Start closing the connection; :class:`ConnectionClosed` (``by_peer=False``) follows the close-ok.

        From now on incoming deliveries are discarded (the broker requeues unacked messages).
        """
        data = self._method(0, "connection.close", (reply_code, reply_text, class_id, method_id))
        self._connection_command("connection.close")
        self._close_reason = (reply_code, reply_text, class_id, method_id)
        self._channels.clear()  # what arrives for them until close-ok is discarded
        return self._with_pending(data)

    # -- channel commands -----------------------------------------------------------------------------------

    def open_channel(self, channel_id: int | None = None) -> tuple[int, bytes]:
        """Allocate a channel id and return ``(channel_id, bytes)``; :class:`ChannelOpened` follows."""
        if (self._state, "channel.open") not in CONNECTION_COMMANDS:
            raise LocalProtocolError(f"cannot open a channel while the connection is {self._state}")
        if channel_id is None:
            channel_id = self._free_channel_id()
        elif not 1 <= channel_id <= self.channel_max:
            raise LocalProtocolError(f"channel id {channel_id} out of range 1-{self.channel_max}")
        elif channel_id in self._channels:
            raise LocalProtocolError(f"channel {channel_id} is already in use")
        data = self._method(channel_id, "channel.open", ("",))
        self._channels[channel_id] = Channel(channel_id)
        return channel_id, self._with_pending(data)

    def close_channel(
        self, channel: int, reply_code: int = 200, reply_text: str = "", class_id: int = 0, method_id: int = 0
    ) -> bytes:
        """Start closing a channel; :class:`ChannelClosed` (``by_peer=False``) follows its close-ok.

        Deliveries that arrive meanwhile are discarded; the broker requeues the channel's unacked messages.
        """
        ch = self._channel_command(channel, "channel.close")
        data = self._method(channel, "channel.close", (reply_code, reply_text, class_id, method_id))
        ch.state = _CLOSING
        ch.expected.clear()
        ch.reset_content()
        return self._with_pending(data)

    def basic_publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties | None = None,
        mandatory: bool = False,
        immediate: bool = False,
    ) -> tuple[int | None, bytes]:
        """Publish one message; return ``(sequence_number, bytes)``.

        ``sequence_number`` is the publisher-confirm delivery tag the broker will ack or nack (see
        :class:`Confirmed`) when the channel is in confirm mode, else ``None``.  The body is split into frames
        of at most ``frame_max`` bytes.
        """
        ch = self._channels.get(channel)
        if ch is None or ch.state is not _OPEN or self._state is not ConnectionState.OPEN:
            self._channel_command(channel, "basic.publish")  # raises with a precise message
            raise AssertionError("unreachable")  # pragma: no cover
        data = encode_publish(
            channel, exchange, routing_key, body, properties, mandatory, immediate, self.frame_max
        )
        seq = None
        if ch.confirm:
            seq = ch.next_seq
            ch.next_seq = seq + 1
        if self._pending:
            data = self._with_pending(data)
        return seq, data

    def basic_ack(self, channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
        """Acknowledge a delivery (with ``multiple``, every unacked one up to ``delivery_tag``)."""
        ch = self._channels.get(channel)
        if ch is None or ch.state is not _OPEN or self._state is not ConnectionState.OPEN:
            self._channel_command(channel, "basic.ack")
        payload = encode_basic_ack(delivery_tag, multiple)
        return self._with_pending(encode_frame(FRAME_METHOD, channel, payload, self.frame_max))

    def confirm_select(self, channel: int, *, nowait: bool = False) -> bytes:
        """Put the channel in publisher-confirm mode; publishes from now on get sequence numbers 1, 2, ...

        :class:`ConfirmSelectOk` follows unless ``nowait``.
        """
        data = self._request(channel, "confirm.select", (nowait,), nowait)
        self._channels[channel].confirm = True
        return data

    # -- command plumbing -----------------------------------------------------------------------------------

    def _connection_command(self, command: str) -> None:
        next_state = CONNECTION_COMMANDS.get((self._state, command))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {command} while the connection is {self._state}")
        self._state = next_state

    def _channel_command(self, channel: int, command: str) -> Channel:
        if self._state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send {command}: the connection is {self._state}")
        ch = self._channels.get(channel)
        if ch is None:
            if not 1 <= channel <= self.channel_max:
                raise LocalProtocolError(f"channel id {channel} out of range 1-{self.channel_max}")
            raise LocalProtocolError(f"cannot send {command}: channel {channel} is not open")
        next_state = CHANNEL_COMMANDS.get((ch.state, command))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {command}: channel {channel} is {ch.state}")
        return ch

    def _request(self, channel: int, name: str, args: tuple[Any, ...], nowait: bool = False) -> bytes:
        ch = self._channel_command(channel, name)
        data = self._method(channel, name, args)
        replies = METHODS_BY_NAME[name].replies
        if replies and not nowait:
            ch.expected.append(replies)
        return self._with_pending(data)

    def _method(self, channel: int, name: str, args: tuple[Any, ...]) -> bytes:
        payload = encode_method(METHODS_BY_NAME[name], args)
        return encode_frame(FRAME_METHOD, channel, payload, self.frame_max)

    def _with_pending(self, data: bytes) -> bytes:
        if not self._pending:
            return data
        self._pending.append(data)
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    def _reply(self, channel: int, name: str, args: tuple[Any, ...]) -> None:
        self._pending.append(self._method(channel, name, args))

    def _free_channel_id(self) -> int:
        # Rotate through ids rather than reusing the lowest: a just-closed id may still have frames in flight.
        limit = self.channel_max
        candidate = self._next_channel
        for _ in range(limit):
            if candidate > limit:
                candidate = 1
            if candidate not in self._channels:
                self._next_channel = candidate + 1
                return candidate
            candidate += 1
        raise LocalProtocolError(f"all {limit} channels are in use")
