"""Durability: fanout to durable queues while their consumers are away; a Redis crash (kill -9) with AOF
``appendfsync always`` keeps every message whose publish returned, acked ones stay gone, and a message
that was unacked when Redis died is redelivered; the topology (exchanges, bindings) survives too."""

from __future__ import annotations

import time

from kelp_redis_kit import LIVENESS, with_options

from kelp import Connection, Exchange, Queue


def _take(bound_queue, n, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        message = bound_queue.get()
        if message is None:
            time.sleep(0.02)
            continue
        message.ack()
        got.append(message)
    return got


def test_fanout_published_while_subscribers_are_away_reaches_them_when_they_return(redis_url):
    news = Exchange("news", "fanout")
    subscribers = [Queue(f"sub-{i}", news, durable=True) for i in range(3)]
    for queue in subscribers:  # each subscriber comes once, subscribes, and leaves
        with Connection(redis_url) as conn:
            queue(conn.default_channel).declare()
    with Connection(redis_url) as publisher:
        producer = publisher.Producer()
        for n in range(5):
            producer.publish({"edition": n}, exchange=news)
    for queue in subscribers:  # later, each comes back (a new process would do the same)
        with Connection(redis_url) as conn:
            got: list = []
            with conn.Consumer([queue], on_message=got.append):
                deadline = time.monotonic() + 10
                while len(got) < 5 and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.25)
                    except TimeoutError:
                        pass
                for message in got:
                    message.ack()
            assert [m.payload for m in got] == [{"edition": n} for n in range(5)]
            assert not any(m.redelivered for m in got)


def test_messages_survive_a_redis_crash_with_aof(private_redis):
    url = with_options(private_redis.url, prefix="aof", liveness=LIVENESS)
    ex = Exchange("jobs", "direct")
    queue = Queue("durable-jobs", ex, routing_key="job", durable=True)
    holder = Connection(url)
    holder.connect()
    queue(holder.default_channel).declare()
    producer = holder.Producer()
    for n in range(50):
        producer.publish(n, exchange=ex, routing_key="job", delivery_mode="persistent")
    producer.publish("transient", exchange=ex, routing_key="job", delivery_mode="transient")
    bound = queue(holder.default_channel)
    first = bound.get()
    first.ack()
    held = bound.get()  # delivered, not acked, when Redis dies
    holder.transport.flush()
    assert (first.payload, held.payload) == (0, 1)

    holder.transport._ticker.stop()  # the holder's process dies with Redis: it never beats again
    private_redis.kill()
    private_redis.start()

    try:
        with Connection(url) as conn:
            # The topology came back with the data: routing through the exchange still works.
            conn.Producer().publish("after restart", exchange=ex, routing_key="job")
            got = _take(queue(conn.default_channel), 51, timeout=10 * LIVENESS + 10)
            payloads = [m.payload for m in got]
            assert sorted(payloads, key=str) == sorted([*range(1, 50), "transient", "after restart"], key=str)
            assert [m.redelivered for m in got if m.payload == 1] == [True]  # released by liveness
            assert sum(m.redelivered for m in got) == 1
            assert queue(conn.default_channel).get() is None
    finally:
        holder.close()
