# Generated from src/kelp/aio/messaging.py by scripts/unasync.py; do not edit.
"""Producers publish, consumers receive: the two roles an application plays.

``Producer.publish`` serializes and compresses the body, fills in the message properties, declares what it
is asked to and hands the message to the transport, under one delivery model on every transport
(docs/transports.md): a persistent message has left the process when ``publish`` returns (written to the
broker's socket or committed to the file); confirms are pipelined, so ``publish`` does not wait for the
broker's answer unless ``confirm_publish`` is set; ``Producer.flush`` is the barrier that waits for every
earlier publish and raises ``MessageNacked`` for refused ones; a lost connection's unconfirmed messages are
published again after the reconnect (at-least-once).

A message published with ``countdown`` or ``eta`` is delayed: routed at once (the bindings of that moment
choose its queues), held by the broker and made ready in each queue at its due time, never earlier; until
then no consumer or ``get`` sees it and it takes no prefetch slot. ``publish`` returns its message id, which
:meth:`Producer.cancel_delayed` takes to withdraw it before it is due (docs/concepts.md).

``Consumer`` subscribes to queues and runs callbacks for each message as the connection drains events; the
callback decides: ``ack``, ``reject`` or ``requeue``.
"""

from __future__ import annotations

from kelp._consumer import Consumer
from kelp._declare import maybe_declare
from kelp._producer import Producer
from kelp._producer import ReturnCallback as ReturnCallback
from kelp._producer import delayed_message_id as delayed_message_id
from kelp._producer import due_time as due_time
from kelp.entity import Exchange as Exchange
from kelp.entity import Queue as Queue

__all__ = ["Consumer", "Producer", "maybe_declare"]
