"""Connection, channel and producer pools, sync face (thread-safe)."""

from __future__ import annotations

import threading
import time

import pytest

from kelp import Connection, Queue, pools
from kelp.exceptions import ChannelLimitExceeded, ConnectionLimitExceeded, LimitExceeded, UsageError
from kelp.messaging import Producer
from kelp.pools import ChannelPool, ConnectionPool, PooledChannel, PooledConnection, ProducerPool


def test_connection_pool_limit_and_reuse(url):
    pool = ConnectionPool(Connection(url), limit=2)
    a = pool.acquire()
    b = pool.acquire()
    assert isinstance(a, PooledConnection)
    assert a is not b
    with pytest.raises(ConnectionLimitExceeded):
        pool.acquire()
    with pytest.raises(LimitExceeded):  # the generic class catches it too
        pool.acquire(block=False)
    a.release()
    assert pool.acquire() is a  # reused, not a new one
    a.release()
    b.release()
    pool.force_close_all()


def test_blocking_acquire_times_out(url):
    pool = Connection(url).Pool(limit=1)
    held = pool.acquire()
    started = time.monotonic()
    with pytest.raises(ConnectionLimitExceeded):
        pool.acquire(block=True, timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2
    held.release()


def test_blocking_acquire_is_woken_by_a_release_from_another_thread(url):
    pool = ConnectionPool(Connection(url), limit=1)
    held = pool.acquire()
    timer = threading.Timer(0.1, held.release)
    timer.start()
    try:
        started = time.monotonic()
        again = pool.acquire(block=True, timeout=5)
        assert again is held
        assert time.monotonic() - started < 2
    finally:
        timer.join(5)
    again.release()


def test_with_block_connects_and_releases(url, name):
    pool = ConnectionPool(Connection(url), limit=1)
    with pool.acquire() as conn:
        assert conn.connected
        conn.default_channel.queue_declare(name)
    # released, still connected, and reused
    with pool.acquire() as again:
        assert again is conn
        assert again.connected
    with pool.acquire_channel() as (conn2, channel):
        assert conn2 is conn
        assert channel is conn.default_channel
    pool.force_close_all()
    assert not conn.connected
    with pytest.raises(UsageError):
        pool.acquire()


def test_clone_of_a_pooled_connection_is_standalone(url):
    pool = ConnectionPool(Connection(url), limit=1)
    conn = pool.acquire()
    clone = conn.clone()
    clone.connect()
    clone.release()  # not pool-managed: this closes it
    assert not clone.connected
    with pytest.raises(ConnectionLimitExceeded):
        pool.acquire()  # the clone did not take or give back a slot
    conn.release()


def test_unlimited_pool_makes_and_closes(url):
    pool = ConnectionPool(Connection(url))
    a = pool.acquire()
    b = pool.acquire()
    assert a is not b
    a.connect()
    a.release()
    assert not a.connected  # no limit: released means closed
    b.release()


def test_channel_pool_limit_preload_and_release(url, name):
    with Connection(url) as conn:
        pool = ChannelPool(conn, limit=3, preload=2)
        first = pool.acquire()
        assert isinstance(first, PooledChannel)
        assert len(pool._idle) == 1  # two were opened at once, one is handed out
        second = pool.acquire()
        third = pool.acquire()
        assert len({first.channel_id, second.channel_id, third.channel_id}) == 3
        with pytest.raises(ChannelLimitExceeded):
            pool.acquire()
        with second:
            Producer(second).publish("on a pooled channel", routing_key=name, declare=[Queue(name)])
        assert pool.acquire() is second  # left the with block: released
        third.close()
        third.release()  # a closed channel is not reused
        fourth = pool.acquire()
        assert fourth is not third
        assert fourth.is_open
        message = Queue(name).bind(fourth).get()
        assert message is not None
        assert message.payload == "on a pooled channel"
        message.ack()
        for channel in (first, second, fourth):
            channel.release()
        pool.force_close_all()
        assert not first.is_open


def test_release_twice_is_ignored(url):
    pool = ConnectionPool(Connection(url), limit=1)
    conn = pool.acquire()
    conn.release()
    conn.release()
    assert pool.acquire() is conn
    with pytest.raises(ConnectionLimitExceeded):
        pool.acquire()


def test_pool_is_thread_safe(url):
    pool = ConnectionPool(Connection(url), limit=2)
    lock = threading.Lock()
    holding = [0]
    peak = [0]
    errors = []

    def work():
        try:
            for _ in range(20):
                with pool.acquire(block=True, timeout=5):
                    with lock:
                        holding[0] += 1
                        peak[0] = max(peak[0], holding[0])
                    time.sleep(0.001)
                    with lock:
                        holding[0] -= 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert peak[0] == 2
    pool.force_close_all()


def test_registries_share_pools_between_equal_connections(url, name):
    try:
        assert pools.connections[Connection(url)] is pools.connections[Connection(url)]
        assert Connection(url) in pools.connections
        assert pools.connections[Connection(url)].limit == pools.get_limit()
        with pools.producers[Connection(url)].acquire(block=True) as producer:
            producer.publish({"via": "pool"}, routing_key=name, declare=[Queue(name)])
        with Connection(url) as conn:
            message = Queue(name).bind(conn).get()
            assert message is not None
            assert message.payload == {"via": "pool"}
            message.ack()
    finally:
        pools.reset()
    assert len(pools.connections) == 0


def test_producer_pool_gives_the_connection_back(url, name):
    connections = ConnectionPool(Connection(url), limit=1)
    producers = ProducerPool(connections, limit=2)
    producer = producers.acquire(block=True)
    with pytest.raises(ConnectionLimitExceeded):
        connections.acquire()  # the producer holds the only connection
    producer.publish("x", routing_key=name, declare=[Queue(name)])
    producer.release()
    conn = connections.acquire()  # released with the producer
    conn.release()
    again = producers.acquire(block=True)
    assert again is producer
    assert again.connection is conn
    again.release()
    producers.force_close_all()
    connections.force_close_all()


def test_producer_pool_with_a_custom_producer_class(url):
    class Loud(Producer):
        loud = True

    producers = ProducerPool(ConnectionPool(Connection(url), limit=1), Producer=Loud, limit=1)
    with producers.acquire(block=True) as producer:
        assert isinstance(producer, Loud)
        assert producer.loud
    assert producers.acquire() is producer


def test_set_limit_resizes_registered_pools(url):
    previous = pools.get_limit()
    try:
        pool = pools.connections[Connection(url)]
        held = [pool.acquire() for _ in range(3)]
        with pytest.raises(UsageError):
            pools.set_limit(2)  # cannot shrink below what is in use
        assert pools.get_limit() == previous
        pools.set_limit(5, force=False)
        assert pool.limit == 5
        for conn in held:
            conn.release()
        assert pools.set_limit(1) == 1
        assert pool.limit == 1
        assert len(pool._idle) == 1  # the extra idle connections were closed
    finally:
        pools.set_limit(previous)
        pools.reset()


def test_limit_must_not_be_bool(url):
    with pytest.raises(TypeError):
        ConnectionPool(Connection(url), limit=True)
