"""Per-channel bookkeeping: publisher-confirm sequence numbers and content (message) assembly.

A message arrives as a method frame (``basic.deliver``/``get-ok``/``return``), one content header and as
many body frames as it takes to carry ``body_size`` bytes; nothing else may interleave on that channel.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._errors import RemoteProtocolError, ReplyCode
from ._events import Confirmed, Deliver, Event, GetOk, Return
from ._properties import BasicProperties, decode_content_header
from ._state import ChannelState

__all__ = ["AWAIT_BODY", "AWAIT_HEADER", "DELIVER", "GET_OK", "NO_CONTENT", "RETURN", "Channel"]

NO_CONTENT, AWAIT_HEADER, AWAIT_BODY = 0, 1, 2
DELIVER, GET_OK, RETURN = "basic.deliver", "basic.get-ok", "basic.return"


class Channel:
    """State of one channel as seen by the client."""

    __slots__ = (
        "awaiting",
        "body_parts",
        "body_size",
        "close_reason",
        "confirm",
        "confirm_ahead",
        "confirm_low",
        "content_args",
        "content_kind",
        "expected",
        "id",
        "next_seq",
        "props",
        "received",
        "state",
    )

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.state = ChannelState.OPENING
        self.expected: deque[tuple[str, ...]] = deque()  # replies owed to us, oldest request first
        self.close_reason: tuple[int, str, int, int] | None = None  # server close while we were closing
        # publisher confirms: tags < confirm_low are settled; confirm_ahead holds settled tags above it
        self.confirm = False
        self.next_seq = 1
        self.confirm_low = 1
        self.confirm_ahead: set[int] = set()
        # content assembly
        self.awaiting = NO_CONTENT
        self.content_kind = ""
        self.content_args: tuple[Any, ...] = ()
        self.props: BasicProperties | None = None
        self.body_size = 0
        self.received = 0
        self.body_parts: list[bytes] = []

    def reset_content(self) -> None:
        self.awaiting = NO_CONTENT
        self.body_parts = []
        self.props = None

    # -- publisher confirms -------------------------------------------------------------------------------

    def settle(self, tag: int, multiple: bool, ack: bool) -> Confirmed | None:
        """Apply a broker ``basic.ack``/``basic.nack``; return the tags it newly settles (None if none)."""
        kind = "basic.ack" if ack else "basic.nack"
        if not self.confirm:
            raise RemoteProtocolError(
                f"{kind} on channel {self.id}, which is not in confirm mode", ReplyCode.COMMAND_INVALID
            )
        published = self.next_seq - 1
        if tag > published or (tag == 0 and not multiple):
            raise RemoteProtocolError(
                f"{kind} for delivery tag {tag} on channel {self.id}, but only {published} were published",
                ReplyCode.PRECONDITION_FAILED,
            )
        low = self.confirm_low
        ahead = self.confirm_ahead
        tags: range | tuple[int, ...]
        if multiple:
            if tag == 0:
                tag = published  # "everything outstanding"
            if tag < low:
                return None  # nothing new to settle
            if ahead:
                tags = tuple(t for t in range(low, tag + 1) if t not in ahead)
                self.confirm_ahead = ahead = {t for t in ahead if t > tag}
            else:
                tags = range(low, tag + 1)
            low = tag + 1
        else:
            if tag < low or tag in ahead:
                raise RemoteProtocolError(
                    f"{kind} for delivery tag {tag} on channel {self.id}, which was already confirmed",
                    ReplyCode.PRECONDITION_FAILED,
                )
            tags = range(tag, tag + 1)
            if tag == low:
                low += 1
            else:
                ahead.add(tag)
        while ahead and low in ahead:
            ahead.discard(low)
            low += 1
        self.confirm_low = low
        return Confirmed(self.id, tags, ack) if tags else None

    # -- content assembly ---------------------------------------------------------------------------------

    def begin_content(self, kind: str, args: tuple[Any, ...]) -> None:
        self.content_kind = kind
        self.content_args = args
        self.awaiting = AWAIT_HEADER

    def content_header(self, payload: bytes, max_body_size: int) -> Event | None:
        """Take a content header; return the finished message event if the body is empty."""
        if self.awaiting != AWAIT_HEADER:
            raise RemoteProtocolError(
                f"unexpected content header on channel {self.id}", ReplyCode.UNEXPECTED_FRAME
            )
        class_id, body_size, props = decode_content_header(payload)
        if class_id != 60:
            raise RemoteProtocolError(
                f"content header for class {class_id}, expected 60", ReplyCode.FRAME_ERROR
            )
        if body_size > max_body_size:
            raise RemoteProtocolError(
                f"message body of {body_size} bytes exceeds max_body_size {max_body_size}",
                ReplyCode.CONTENT_TOO_LARGE,
            )
        if body_size == 0:
            return self._complete(props, b"")
        self.props = props
        self.body_size = body_size
        self.received = 0
        self.awaiting = AWAIT_BODY
        return None

    def content_body(self, payload: bytes) -> Event | None:
        """Take a body frame; return the finished message event once ``body_size`` bytes are in."""
        if self.awaiting != AWAIT_BODY:
            raise RemoteProtocolError(
                f"unexpected content body on channel {self.id}", ReplyCode.UNEXPECTED_FRAME
            )
        received = self.received + len(payload)
        if received < self.body_size:
            self.received = received
            self.body_parts.append(payload)
            return None
        if received > self.body_size:
            raise RemoteProtocolError(
                f"content body on channel {self.id} is longer than its header announced",
                ReplyCode.FRAME_ERROR,
            )
        if self.body_parts:
            self.body_parts.append(payload)
            payload = b"".join(self.body_parts)
            self.body_parts = []
        props = self.props
        assert props is not None
        if self.content_kind == DELIVER:  # the common case, without the extra call
            self.awaiting = NO_CONTENT
            self.props = None
            a = self.content_args
            return Deliver(self.id, a[0], a[1], a[2], a[3], a[4], props, payload)
        return self._complete(props, payload)

    def _complete(self, props: BasicProperties, body: bytes) -> Event:
        self.awaiting = NO_CONTENT
        self.props = None
        kind = self.content_kind
        a = self.content_args
        if kind == DELIVER:
            return Deliver(self.id, a[0], a[1], a[2], a[3], a[4], props, body)
        if kind == GET_OK:
            return GetOk(self.id, a[0], a[1], a[2], a[3], a[4], props, body)
        return Return(self.id, a[0], a[1], a[2], a[3], props, body)
