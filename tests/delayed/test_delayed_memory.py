"""memory:// keeps delayed messages in a heap per queue and an index by message id: both are emptied as
messages are delivered, cancelled or deleted with their queue (nothing leaks, nothing fails)."""

from __future__ import annotations

import time
import uuid

import kelp
from kelp._broker.memory import broker_for


def test_the_index_is_emptied_by_delivery_cancel_and_delete():
    name = uuid.uuid4().hex
    store = broker_for(name).store
    with kelp.Connection(f"memory://{name}") as conn:
        producer = conn.Producer()
        queue = kelp.Queue("q")(conn.default_channel)
        queue.declare()
        delivered = producer.publish("soon", routing_key="q", countdown=0.05)
        cancelled = producer.publish("cancelled", routing_key="q", countdown=60)
        deleted = producer.publish("deleted", routing_key="q", countdown=60)
        assert set(store._held_ids) == {delivered, cancelled, deleted}
        assert producer.cancel_delayed(cancelled) == 1
        time.sleep(0.1)
        assert queue.get().payload == "soon"
        assert set(store._held_ids) == {deleted}
        queue.delete()  # holds a cancelled copy and a live one
        assert store._held_ids == {}
        assert producer.cancel_delayed(deleted) == 0


def test_same_message_id_twice_cancels_both():
    with kelp.Connection(f"memory://{uuid.uuid4().hex}") as conn:
        kelp.Queue("q")(conn.default_channel).declare()
        producer = conn.Producer()
        producer.publish("a", routing_key="q", countdown=60, message_id="same")
        producer.publish("b", routing_key="q", countdown=60, message_id="same")
        assert conn.transport.queue_stats()[0].delayed == 2
        assert producer.cancel_delayed("same") == 2
        assert conn.transport.queue_stats()[0].delayed == 0
