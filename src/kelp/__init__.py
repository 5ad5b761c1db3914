"""kelp: AMQP-model messaging for Python — exchanges, queues, bindings, producers, consumers and acks.

This is the sync API; :mod:`kelp.aio` is the same API for asyncio. Names follow Kombu's, so a Kombu
program runs after changing its imports from ``kombu`` to ``kelp``.
"""

from kelp.connection import Channel, Connection
from kelp.entity import Exchange, Queue, binding
from kelp.exceptions import KelpError
from kelp.message import Message
from kelp.messaging import Consumer, Producer, maybe_declare
from kelp.simple import SimpleBuffer, SimpleQueue

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "Connection",
    "Consumer",
    "Exchange",
    "KelpError",
    "Message",
    "Producer",
    "Queue",
    "SimpleBuffer",
    "SimpleQueue",
    "binding",
    "maybe_declare",
]
