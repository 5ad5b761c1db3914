"""A received message: its body and properties, and the one decision a consumer makes about it.

Every message is settled exactly once: :meth:`Message.ack` removes it from its queue,
:meth:`Message.reject` drops it (or dead-letters it, when the queue has a dead-letter exchange) and
:meth:`Message.requeue` puts it back at the head of its queue, flagged ``redelivered``. A message nobody
settles stays unacked until its channel or connection closes, and then goes back to its queue too.
Settling twice raises :class:`~kelp.exceptions.MessageStateError`.

A body that cannot be decompressed (an unknown or non-string ``compression`` header, a corrupt body) does
not stop delivery: the message is built with the body as it travelled and the error in
:attr:`Message.errors`; :meth:`Message.decode` raises it, and a consumer hands it to ``on_decode_error``.
The message can be settled like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from kelp import _observe
from kelp._envelope import Delivery
from kelp.compression import decompress
from kelp.exceptions import KelpError, MessageStateError
from kelp.serialization import loads

if TYPE_CHECKING:
    from kelp.aio.connection import Channel

__all__ = ["Message"]

ACK_STATES = frozenset({"ACK", "REJECTED", "REQUEUED"})


class Message:
    """A message delivered to a consumer or fetched with ``get``.

    ``body`` is the payload as it travelled (decompressed); ``payload``/``decode()`` deserialize it,
    honouring the consumer's ``accept`` list (a refused content type raises ContentDisallowed and nothing
    is deserialized). ``_state`` is ``RECEIVED`` until settled, then ``ACK``, ``REJECTED`` or ``REQUEUED``.
    ``errors`` lists what went wrong while building the message (a body that could not be decompressed
    stays as it travelled); ``decode()`` raises the first of them.
    """

    __slots__ = (
        "_decoded",
        "_no_ack",
        "_state",
        "accept",
        "body",
        "channel",
        "content_encoding",
        "content_type",
        "delivery_info",
        "delivery_tag",
        "errors",
        "headers",
        "properties",
    )

    #: What settling a message twice raises (Kombu's alias).
    MessageStateError = MessageStateError

    def __init__(
        self,
        channel: Channel | None,
        delivery: Delivery,
        accept: Collection[str] | None = None,
        no_ack: bool = False,
    ) -> None:
        self.channel = channel
        self.accept = accept
        properties = delivery.properties
        self.properties = properties
        self.headers = delivery.headers
        self.content_type: str | None = properties.get("content_type")
        self.content_encoding: str | None = properties.get("content_encoding")
        self.delivery_tag = delivery.delivery_tag
        self.delivery_info: dict[str, Any] = {
            "exchange": delivery.exchange,
            "routing_key": delivery.routing_key,
            "redelivered": delivery.redelivered,
            "delivery_tag": delivery.delivery_tag,
            "consumer_tag": delivery.consumer_tag,
        }
        if delivery.message_count is not None:
            self.delivery_info["message_count"] = delivery.message_count
        self.errors: list[Exception] = []
        self.body = delivery.body
        compression = delivery.headers.get("compression") if delivery.headers else None
        if compression:
            try:
                self.body = decompress(delivery.body, compression)
            except KelpError as exc:  # decompress() raises nothing else
                self.errors.append(exc)
        self._decoded: Any = _NOT_DECODED
        self._state = "ACK" if no_ack else "RECEIVED"
        self._no_ack = no_ack

    # --- content -------------------------------------------------------------------------------------

    def decode(self) -> Any:
        """Deserialize the body (once; later calls return the same object).

        Raises the first of :attr:`errors` when the body could not be decompressed."""
        if self.errors:
            raise self.errors[0]
        if self._decoded is _NOT_DECODED:
            self._decoded = loads(self.body, self.content_type, self.content_encoding, accept=self.accept)
        return self._decoded

    @property
    def payload(self) -> Any:
        return self.decode()

    @property
    def redelivered(self) -> bool:
        return bool(self.delivery_info["redelivered"])

    @property
    def acknowledged(self) -> bool:
        """True once the message was acked, rejected or requeued (or was delivered with no_ack)."""
        return self._state in ACK_STATES

    @property
    def state(self) -> str:
        return self._state

    # --- settling ------------------------------------------------------------------------------------

    def _settle(self, state: str) -> Channel:
        if self.channel is None:
            raise MessageStateError("this message has no channel to acknowledge it on")
        if self._state in ACK_STATES:
            raise MessageStateError(f"message already acknowledged with state: {self._state}")
        self._state = state
        return self.channel

    async def ack(self, multiple: bool = False) -> None:
        """Acknowledge: the broker deletes the message. With ``multiple``, also every earlier unacked one
        on this channel. A message delivered with ``no_ack`` needs none: acking it does nothing."""
        if self._no_ack:
            return
        channel = self._settle("ACK")
        observer = _observe.observer
        if observer is None:
            await channel.basic_ack(self.delivery_tag, multiple=multiple)
            return
        done = observer.settle_start(self, "ack")
        try:
            await channel.basic_ack(self.delivery_tag, multiple=multiple)
        except BaseException as exc:
            done(exc)
            raise
        done(None)

    async def reject(self, requeue: bool = False) -> None:
        """Refuse the message: requeue it, or drop it (dead-lettered when the queue has a DLX)."""
        channel = self._settle("REQUEUED" if requeue else "REJECTED")
        observer = _observe.observer
        if observer is None:
            await channel.basic_reject(self.delivery_tag, requeue=requeue)
            return
        done = observer.settle_start(self, "requeue" if requeue else "reject")
        try:
            await channel.basic_reject(self.delivery_tag, requeue=requeue)
        except BaseException as exc:
            done(exc)
            raise
        done(None)

    async def requeue(self) -> None:
        """Put the message back at the head of its queue, to be redelivered flagged ``redelivered``."""
        await self.reject(requeue=True)

    async def ack_log_error(
        self, logger: logging.Logger, errors: tuple[type[BaseException], ...], multiple: bool = False
    ) -> None:
        try:
            await self.ack(multiple=multiple)
        except errors as exc:
            logger.critical("acknowledging message %r failed: %r", self.delivery_tag, exc, exc_info=True)

    async def reject_log_error(
        self, logger: logging.Logger, errors: tuple[type[BaseException], ...], requeue: bool = False
    ) -> None:
        try:
            await self.reject(requeue=requeue)
        except errors as exc:
            logger.critical("rejecting message %r failed: %r", self.delivery_tag, exc, exc_info=True)

    def __repr__(self) -> str:
        return (
            f"<Message {self.delivery_tag} state={self._state} content_type={self.content_type!r} "
            f"body={self.body[:40]!r}>"
        )


class _NotDecoded:
    def __repr__(self) -> str:
        return "<not decoded>"


_NOT_DECODED = _NotDecoded()
