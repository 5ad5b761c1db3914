"""kelp: AMQP-model messaging for Python — exchanges, queues, bindings, producers, consumers and acks.

This is the sync API; :mod:`kelp.aio` is the same API for asyncio. Names follow Kombu's, so a Kombu
program runs after changing its imports from ``kombu`` to ``kelp``.
"""

from kelp.common import Broadcast, eventloop, uuid
from kelp.connection import Channel, Connection
from kelp.entity import Exchange, Queue, binding
from kelp.exceptions import KelpError
from kelp.message import Message
from kelp.messaging import Consumer, Producer, maybe_declare
from kelp.mixins import ConsumerMixin, ConsumerProducerMixin
from kelp.pools import connections, producers
from kelp.serialization import disable_insecure_serializers, enable_insecure_serializers
from kelp.simple import SimpleBuffer, SimpleQueue

#: Kombu's older name for :class:`Connection`.
BrokerConnection = Connection

__version__ = "0.1.0"

__all__ = [
    "Broadcast",
    "BrokerConnection",
    "Channel",
    "Connection",
    "Consumer",
    "ConsumerMixin",
    "ConsumerProducerMixin",
    "Exchange",
    "KelpError",
    "Message",
    "Producer",
    "Queue",
    "SimpleBuffer",
    "SimpleQueue",
    "binding",
    "connections",
    "disable_insecure_serializers",
    "enable_insecure_serializers",
    "eventloop",
    "maybe_declare",
    "producers",
    "uuid",
]
