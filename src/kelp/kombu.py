"""A Kombu transport over kelp's engines, so that Celery (or any Kombu program) runs on them by URL.

::

    import kelp.kombu                                   # registers the "kelp" transport with Kombu
    app.conf.broker_url = "kelp+sqlite:///celery.db"    # or kelp+redis://..., kelp+amqp://..., kelp+memory://

``broker_transport = "kelp.kombu:Transport"`` with a plain kelp URL (``sqlite:///celery.db``) works too, with
no import. Everything after ``kelp+`` is a kelp URL; its query options and Kombu's
``transport_options`` (Celery's ``broker_transport_options``) become the kelp transport's options.

This is a *native* transport: it sits on kelp's transport interface (:mod:`kelp.transport.base`), not on
Kombu's virtual transport. Routing, unacked tracking, prefetch and redelivery stay in kelp's engines: a
message Celery has not acked belongs to the connection's channel, and returns to its queue flagged
``redelivered`` when the channel closes or the worker process dies (within the engine's window; Kombu's
own Redis transport waits ``visibility_timeout`` instead).

Declaring again, with the same options, a queue that a connection of this process to the same broker
consumes from needs no broker round trip (Celery declares its reply queue before every task).

Deliveries reach consumers through Kombu's blocking loop (``Connection.drain_events``): Celery's
``synloop``. The event-loop (hub) path is not taken: ``implements.asynchronous`` is False.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from typing import Any

try:
    import kombu.transport
    from kombu.transport import base as _kombu_base
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("kelp.kombu is a Kombu transport and needs Kombu: pip install 'kelp[kombu]'") from exc

import kelp
from kelp._known_queues import KNOWN_QUEUES, KnownQueues
from kelp._kombu_channel import Channel, Message
from kelp.connection import resolve_transport
from kelp.exceptions import ConsumerCancelled, UsageError
from kelp.transport.base import Delivery, Envelope
from kelp.transport.base import Transport as KelpTransport
from kelp.url import URL, parse_url

__all__ = ["Channel", "Message", "Transport", "register"]

logger = logging.getLogger("kelp.kombu")

#: The alias Kombu resolves ``kelp+...://`` URLs (and ``transport="kelp"``) to.
ALIAS = "kelp"

# Per Kombu Connection: what a lost kelp connection had not had confirmed, published again by the next one
# (at-least-once, as kelp's own Connection does). Kombu replaces its Transport object on reconnect; the
# Connection (the key) stays.
_OUTBOXES: weakref.WeakKeyDictionary[Any, list[Envelope]] = weakref.WeakKeyDictionary()

# Options Kombu or Celery put in ``transport_options`` for themselves (retry policies), not for kelp.
_KOMBU_ONLY_OPTIONS = frozenset({"max_retries", "interval_start", "interval_step", "interval_max", "errback"})


class Management(_kombu_base.Management):
    """What ``celery list bindings`` asks for."""

    def get_bindings(self) -> list[dict[str, Any]]:
        kelp_transport = self.transport.client.connection
        return [
            {"source": source, "destination": destination, "routing_key": routing_key, "kind": kind}
            for source, kind, destination, routing_key, _ in kelp_transport.list_bindings()
        ]


# Transport.Channel (Kombu looks it up there) shadows the class name inside the class body.
_Channel = Channel


class Transport(_kombu_base.Transport):
    """Kombu's transport for kelp URLs; the connection object Kombu holds is a kelp transport."""

    Channel = Channel
    Message = Message
    Management = Management

    #: Kombu hands over the URL text after ``kelp+`` unparsed.
    can_parse_url = True
    driver_type = "kelp"
    driver_name = "kelp"
    connection_errors = KelpTransport.connection_errors  # type: ignore[assignment]
    channel_errors = KelpTransport.channel_errors  # type: ignore[assignment]
    implements = _kombu_base.default_transport_capabilities.extend(  # type: ignore[no-untyped-call]
        asynchronous=False,
        exchange_type=frozenset(["direct", "topic", "fanout", "headers"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        self.url = kelp_url(client.hostname)
        self.kelp_transport_cls: type[KelpTransport] = resolve_transport(self.url.transport)
        self._channels: dict[int, _Channel] = {}
        self._pending: deque[Delivery] = deque()
        self._pid = os.getpid()
        self._known_key = (self._pid, self.url.as_uri())

    def driver_version(self) -> str:
        return kelp.__version__

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        text = kelp_url(uri).as_uri(include_password=include_password)
        return f"{ALIAS}+{text}"

    def establish_connection(self) -> KelpTransport:
        """Connect to the engine the kelp URL names."""
        client: Any = self.client
        options: dict[str, Any] = {
            key: value
            for key, value in (client.transport_options or {}).items()
            if key not in _KOMBU_ONLY_OPTIONS
        }
        options.update(heartbeat=client.heartbeat or 0, ssl=client.ssl, login_method=client.login_method)
        connection = self.kelp_transport_cls(self.url, options)
        connection.connect(client.connect_timeout)
        self._pid = os.getpid()
        self._forget_all()
        outbox = _OUTBOXES.pop(client, None)
        if outbox:
            channel = connection.open_channel()
            try:
                channel.publish(outbox)
            finally:
                channel.close()
        return connection

    def close_connection(self, connection: KelpTransport) -> None:
        """Close the kelp connection: it first waits for the broker to confirm what it published (a lost
        one keeps its unconfirmed messages for the next connection); unacked deliveries return to their
        queues."""
        self._forget_all()
        if connection.is_connected:
            timeout = float(self.client.transport_options.get("close_timeout", 30.0)) if self.client else 30.0
            try:
                connection.flush(timeout)
            except TimeoutError:
                logger.warning("closing with %d unconfirmed publishes", len(connection.unconfirmed()))
            except KelpTransport.connection_errors:
                pass  # lost while flushing: the outbox is kept below
        if not connection.is_connected:
            self._keep_outbox(connection)
        connection.close()

    def _collect(self, connection: KelpTransport | None) -> None:
        """Kombu's clean-up of a connection it gave up on (after a connection error, or in a forked child)."""
        self._forget_all()
        if connection is None or os.getpid() != self._pid:
            # A forked child must not close the parent's connection: that would hand the parent's
            # unacked deliveries back to their queues. Drop the references only.
            return
        self._keep_outbox(connection)
        try:
            connection.close()  # its unacked deliveries return to their queues now
        except Exception:
            logger.debug("error while discarding a lost kelp connection", exc_info=True)

    def _forget_all(self) -> None:
        self._channels.clear()
        self._pending.clear()
        self.known_queues.forget(self)

    @property
    def known_queues(self) -> KnownQueues:
        """What this process's connections to this broker know of its queues (a forked child starts
        with nothing: its parent's consumers are not its own)."""
        if self._known_key[0] != os.getpid():
            self._known_key = (os.getpid(), self._known_key[1])
        return KNOWN_QUEUES.setdefault(self._known_key, KnownQueues())

    def _keep_outbox(self, connection: KelpTransport) -> None:
        unconfirmed = connection.unconfirmed()
        if unconfirmed and self.client is not None:
            _OUTBOXES.setdefault(self.client, []).extend(unconfirmed)

    def create_channel(self, connection: KelpTransport) -> _Channel:
        channel = _Channel(self, connection.open_channel())
        self._channels[channel.channel_id] = channel
        return channel

    def forget_channel(self, channel: _Channel) -> None:
        if self._channels.get(channel.channel_id) is channel:
            del self._channels[channel.channel_id]

    def close_channel(self, channel: _Channel) -> None:
        channel.close()

    def drain_events(self, connection: KelpTransport, timeout: float | None = None, **kwargs: Any) -> None:
        """Hand one arrived delivery to its consumer's callback, waiting up to ``timeout`` seconds (None:
        forever); raise ``socket.timeout`` when none came.

        One per call, as Kombu's contract says: callers drain until their own message arrives (Celery's
        ``rpc://`` results) and buffer only so many others. The rest of a batch the engine handed over
        waits here, still unacked, for the next calls, which return at once."""
        pending = self._pending
        while True:
            if not pending:
                try:
                    pending.extend(connection.drain(timeout))
                except ConsumerCancelled as exc:
                    # Its queue is gone: the next declaration must reach the broker.
                    self.known_queues.cancelled(self, exc.channel_id, exc.consumer_tag)
                    raise
            delivery = pending.popleft()
            channel = self._channels.get(delivery.channel_id)
            if channel is not None:
                channel.dispatch(delivery)
                return
            logger.debug("delivery %r for a closed channel: the engine returns it", delivery)

    def verify_connection(self, connection: KelpTransport) -> bool:
        return connection.is_connected

    def qos_semantics_matches_spec(self, connection: KelpTransport) -> bool:
        # As on RabbitMQ >= 3.3: a per-consumer prefetch is the default, ``global`` means the channel;
        # Celery then asks for a channel-wide window that it can change while consuming.
        return False


def kelp_url(text: str | None) -> URL:
    """The kelp URL of a Kombu connection (the text after ``kelp+``, or the whole URL given with
    ``transport="kelp.kombu:Transport"``)."""
    if not text or "://" not in text:
        raise UsageError(
            f"kelp.kombu needs a kelp URL such as kelp+sqlite:///celery.db or kelp+memory://, got {text!r}"
        )
    if text.startswith(ALIAS + "+"):
        text = text[len(ALIAS) + 1 :]
    return parse_url(text)


def register() -> None:
    """Make ``kelp+<url>`` URLs and ``transport="kelp"`` select this transport in Kombu (and Celery)."""
    kombu.transport.TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"


register()
