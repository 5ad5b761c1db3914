"""The redis:// transport beyond the shared conformance suite: URL options, isolation, wake-ups, batches,
dead-letter cycles, inspection and errors."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kelp_redis_kit import free_port, with_options

from kelp import Connection, Exchange, Queue
from kelp.exceptions import NotFound, OperationalError, UsageError


def test_prefix_must_be_plain_text(redis_base):
    with pytest.raises(UsageError, match="prefix"):
        Connection(with_options(redis_base, prefix="a}b")).connect()


def test_prefixes_are_separate_brokers(redis_base):
    first = with_options(redis_base, prefix=uuid.uuid4().hex[:12])
    second = with_options(redis_base, prefix=uuid.uuid4().hex[:12])
    with Connection(first) as a, Connection(second) as b:
        Queue("same-name")(a.default_channel).declare()
        a.Producer().publish("only in a", routing_key="same-name")
        with pytest.raises(NotFound):
            Queue("same-name")(b.default_channel).queue_declare(passive=True)
        assert Queue("same-name")(a.default_channel).get().payload == "only in a"


def test_unreachable_server_is_an_operational_error():
    with pytest.raises(OperationalError):
        Connection(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1).connect()


def test_a_blocked_drain_wakes_for_the_first_message_of_a_fresh_queue(redis_url):
    """The drain waits on the queue's streams before they exist; a publish wakes it at once."""
    with Connection(redis_url) as conn, Connection(redis_url) as publisher:
        got = []
        with conn.Consumer([Queue("fresh")], on_message=got.append):
            sent = []

            def publish_later():
                time.sleep(0.2)
                sent.append(time.monotonic())
                publisher.Producer().publish("hello", routing_key="fresh")

            thread = threading.Thread(target=publish_later)
            thread.start()
            conn.drain_events(timeout=5)
            arrived = time.monotonic()
            thread.join()
            assert [m.payload for m in got] == ["hello"]
            assert arrived - sent[0] < 0.3  # woken by the write, not by a poll
            got[0].ack()


def test_a_large_batch_is_stored_in_order(redis_url):
    with Connection(redis_url) as conn:
        bq = Queue("batch")(conn.default_channel)
        bq.declare()
        producer = conn.Producer()
        producer.publish_many([producer.prepare(n, routing_key="batch") for n in range(1234)])
        assert bq.queue_declare(passive=True).message_count == 1234
        got = []
        with conn.Consumer([Queue("batch")], on_message=got.append, prefetch_count=500):
            deadline = time.monotonic() + 20
            while len(got) < 1234 and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
                for message in got:
                    if not message.acknowledged:
                        message.ack()
        assert [m.payload for m in got] == list(range(1234))
        assert bq.get() is None


def test_acks_are_sent_with_the_next_operation_and_on_close(redis_url):
    with Connection(redis_url) as observer:
        Queue("acks")(observer.default_channel).declare()
        observer.Producer().publish_many(
            [observer.Producer().prepare(n, routing_key="acks") for n in range(3)]
        )
        with Connection(redis_url) as worker:
            bq = Queue("acks")(worker.default_channel)
            messages = [bq.get() for _ in range(3)]
            messages[0].ack()
            assert _unacked(observer, "acks") == 3  # buffered: not sent yet
            worker.default_channel.queue_declare("acks", passive=True)  # any operation sends them
            assert _unacked(observer, "acks") == 2
            messages[1].ack()
        # closing sent the last ack and released the unacked third message
        assert _unacked(observer, "acks") == 0
        [back] = [Queue("acks")(observer.default_channel).get()]
        assert back.payload == 2
        assert back.redelivered


def _unacked(conn, queue):
    return {name: unacked for name, _, unacked, _ in conn.transport.queue_stats()}[queue]


def test_an_expiry_cycle_through_the_dead_letter_exchange_ends(redis_url):
    """A queue whose expired messages dead-letter back into itself: RabbitMQ drops the message the second
    time it would expire from the same queue, instead of cycling forever."""
    with Connection(redis_url) as conn:
        loop = Exchange("loop", "direct")
        bq = Queue("cycle", loop, routing_key="cycle", message_ttl=0.05, dead_letter_exchange="loop")(
            conn.default_channel
        )
        bq.declare()
        conn.Producer().publish("round and round", exchange=loop, routing_key="cycle")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = {name: ready for name, ready, _, _ in conn.transport.queue_stats()}
            outbox = conn.transport._client.xlen(conn.transport._outbox_key)
            if stats["cycle"] == 0 and outbox == 0:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        assert bq.get() is None
        assert conn.transport._client.xlen(conn.transport._outbox_key) == 0


def test_bindings_and_stats_are_listed(redis_url):
    with Connection(redis_url) as conn:
        ex = Exchange("listed", "headers")
        Queue("q-listed", ex, binding_arguments={"x-match": "any", "a": 1, "b": b"raw"})(
            conn.default_channel
        ).declare()
        conn.Producer().publish("m", exchange=ex, headers={"a": 1})
        bindings = conn.transport.list_bindings()
        assert ("listed", "queue", "q-listed", "", {"x-match": "any", "a": 1, "b": b"raw"}) in bindings
        assert ("q-listed", 1, 0, 0) in conn.transport.queue_stats()


def test_invalid_x_match_is_refused_only_on_headers_exchanges(redis_url):
    with Connection(redis_url) as conn:
        channel = conn.default_channel
        Exchange("h", "headers")(channel).declare()
        Exchange("d", "direct")(channel).declare()
        Queue("q")(channel).declare()
        with pytest.raises(ValueError, match="x-match"):
            channel.queue_bind("q", "h", "", arguments={"x-match": "most"})
        channel.queue_bind("q", "d", "k", arguments={"x-match": "most"})
