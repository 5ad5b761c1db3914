"""Delayed messages on redis://: held in a sorted set per queue, they survive a Redis crash (kill -9) with
AOF ``appendfsync always`` like ready ones, are still never delivered early, and can still be cancelled;
the Lua script moves them into the queue's streams on time even with no consumer of that queue."""

from __future__ import annotations

import time

from kelp_redis_kit import LIVENESS, with_options

from kelp import Connection, Queue


def _take(bound_queue, n, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        message = bound_queue.get()
        if message is None:
            time.sleep(0.02)
            continue
        message.ack()
        got.append((message.payload, time.time()))
    return got


def test_delayed_messages_survive_a_redis_crash_with_aof(private_redis):
    url = with_options(private_redis.url, prefix="delayed", liveness=LIVENESS)
    queue = Queue("later", durable=True)
    with Connection(url) as conn:
        queue(conn.default_channel).declare()
        producer = conn.Producer()
        due = time.time() + 2.0
        for n in range(20):
            producer.publish(n, routing_key="later", countdown=2.0)
        cancelled = producer.publish("cancelled", routing_key="later", countdown=2.0)
        assert conn.transport.queue_stats()[0].delayed == 21
    private_redis.kill()
    private_redis.start()
    with Connection(url) as conn:
        bound = queue(conn.default_channel)
        assert conn.transport.queue_stats()[0].delayed == 21  # back from the append-only file
        assert conn.Producer().cancel_delayed(cancelled) == 1  # the cancel index came back too
        if time.time() < due - 0.2:
            assert bound.get() is None
        got = _take(bound, 20, timeout=10)
        assert [payload for payload, _ in got] == list(range(20))
        assert all(at >= due for _, at in got)
        assert bound.get() is None
        assert conn.transport.queue_stats()[0].delayed == 0


def test_held_messages_of_a_deleted_queue_leave_nothing_behind(redis_url):
    import redis as redis_client

    with Connection(redis_url) as conn:
        bound = Queue("doomed")(conn.default_channel)
        bound.declare()
        message_id = conn.Producer().publish("x", routing_key="doomed", countdown=60)
        bound.delete()
        assert conn.Producer().cancel_delayed(message_id) == 0
        prefix = conn.transport._key
    raw = redis_client.Redis.from_url(redis_url.split("?")[0])
    try:
        assert not raw.exists(prefix + "qd:doomed", prefix + "qdm:doomed", prefix + "qdi:doomed")
        assert not raw.sismember(prefix + "dq", "doomed")
    finally:
        raw.close()


def test_due_messages_move_without_a_consumer_of_their_queue(redis_url):
    # Another connection's heartbeat or claim sweeps what is due: the stats show it ready on time.
    with Connection(redis_url) as conn:
        Queue("idle")(conn.default_channel).declare()
        conn.Producer().publish("x", routing_key="idle", countdown=0.3)
        time.sleep(0.5)
        row = next(r for r in conn.transport.queue_stats() if r[0] == "idle")
        assert (row.ready, row.delayed) == (1, 0)


def test_the_cancel_index_is_emptied_as_messages_become_due(redis_url):
    import redis as redis_client

    with Connection(redis_url) as conn:
        bound = Queue("soon")(conn.default_channel)
        bound.declare()
        producer = conn.Producer()
        first = producer.publish("a", routing_key="soon", countdown=0.1, message_id="twice")
        producer.publish("b", routing_key="soon", countdown=60, message_id="twice")
        assert first == "twice"
        time.sleep(0.2)
        assert bound.get().payload == "a"
        prefix = conn.transport._key
        raw = redis_client.Redis.from_url(redis_url.split("?")[0])
        try:
            assert raw.hkeys(prefix + "qdi:soon") == [b"twice"]  # one member left under the id
            assert producer.cancel_delayed("twice") == 1
            assert raw.hlen(prefix + "qdi:soon") == 0
            assert not raw.sismember(prefix + "dq", "soon") or raw.zcard(prefix + "qd:soon") == 0
        finally:
            raw.close()
