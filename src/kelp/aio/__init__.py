"""kelp for asyncio: the same API as :mod:`kelp`, with ``await`` where the broker is involved.

``async with Connection(url) as conn``, ``await producer.publish(...)``, ``async for message in consumer``,
``await message.ack()``. The sync API is generated from these modules (``scripts/unasync.py``), so the two
faces behave alike by construction.
"""

from kelp.aio.common import Broadcast, eventloop, uuid
from kelp.aio.connection import Channel, Connection
from kelp.aio.message import Message
from kelp.aio.messaging import Consumer, Producer, maybe_declare
from kelp.aio.mixins import ConsumerMixin, ConsumerProducerMixin
from kelp.aio.pools import connections, producers
from kelp.aio.simple import SimpleBuffer, SimpleQueue
from kelp.entity import Exchange, Queue, binding
from kelp.exceptions import KelpError
from kelp.serialization import disable_insecure_serializers, enable_insecure_serializers

#: Kombu's older name for :class:`Connection`.
BrokerConnection = Connection

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
