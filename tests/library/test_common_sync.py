"""kelp.common helpers, sync face."""

from __future__ import annotations

import socket
import time
import uuid as uuid_module

import pytest

from kelp import Connection, Exchange, Producer, Queue
from kelp.common import (
    Broadcast,
    collect_replies,
    declaration_cached,
    drain_consumer,
    eventloop,
    ignore_errors,
    insured,
    itermessages,
    maybe_declare,
    send_reply,
    uuid,
)
from kelp.exceptions import NotFound, OperationalError, UsageError
from kelp.pools import ConnectionPool


def test_uuid_is_a_fresh_uuid4_string():
    first, second = uuid(), uuid()
    assert first != second
    assert uuid_module.UUID(first).version == 4


def test_broadcast_queue_shape(name):
    a, b = Broadcast(name), Broadcast(name)
    assert a.name.startswith("bcast.")
    assert a.name != b.name
    assert a.exchange == Exchange(name, "fanout")
    assert a.auto_delete
    assert a.alias == name
    assert Broadcast(name, queue="fixed").name == "fixed"
    unique = Broadcast(name, queue="fixed", unique=True)
    assert unique.name.startswith("fixed.")
    assert unique.name != "fixed"
    custom = Broadcast(queue="q", exchange=Exchange(name, "topic"))
    assert custom.exchange is not None
    assert custom.exchange.type == "topic"
    with pytest.raises(UsageError):
        Broadcast()


def test_broadcast_reaches_every_instance(url, name):
    conns = [Connection(url) for _ in range(3)]
    try:
        listeners = [Broadcast(name) for _ in conns]
        for conn, listener in zip(conns, listeners):
            maybe_declare(listener, conn.default_channel)
        with Connection(url) as publisher:
            for n in range(2):
                Producer(publisher).publish(f"to all {n}", exchange=Exchange(name, "fanout"))
        for conn, listener in zip(conns, listeners):
            bodies = [body for body, _ in itermessages(conn, None, listener, limit=2, timeout=2, no_ack=True)]
            assert bodies == ["to all 0", "to all 1"]
            # auto_delete: the queue went away with the only consumer it had
            with pytest.raises(NotFound):
                conn.channel().queue_declare(listener.name, passive=True)
    finally:
        for conn in conns:
            conn.close()


def test_itermessages_yields_each_message_once(url, name):
    queue = Queue(name)
    with Connection(url) as conn:
        producer = Producer(conn)
        for n in range(3):
            producer.publish(n, routing_key=name, declare=[queue])
        got = []
        for body, message in itermessages(conn, conn.default_channel, queue, limit=3, timeout=2):
            got.append(body)
            message.ack()
        assert got == [0, 1, 2]
        assert conn.default_channel.queue_declare(name, passive=True).message_count == 0


def test_itermessages_timeout_yields_nothing(url, name):
    with Connection(url) as conn:
        started = time.monotonic()
        assert list(itermessages(conn, None, Queue(name), limit=1, timeout=0.1)) == []
        assert time.monotonic() - started < 2


def test_drain_consumer_requeues_what_it_did_not_yield(url, name):
    queue = Queue(name)
    seen = []
    with Connection(url) as conn:
        producer = Producer(conn)
        for n in range(4):
            producer.publish(n, routing_key=name, declare=[queue])
        consumer = conn.Consumer([queue])
        pairs = list(
            drain_consumer(consumer, limit=1, timeout=2, callbacks=[lambda body, m: seen.append(body)])
        )
        assert [body for body, _ in pairs] == [0]
        assert seen == [0, 1, 2, 3]  # the extra callbacks saw every delivery
        pairs[0][1].ack()
        assert consumer.active_queues == []  # cancelled on exit
        rest = [body for body, m in itermessages(conn, None, queue, limit=3, timeout=2) if not m.ack()]
        assert rest == [1, 2, 3]  # requeued in order


def test_eventloop_timeouts(url, name):
    with Connection(url) as conn:
        with pytest.raises(socket.timeout):
            list(eventloop(conn, limit=1, timeout=0.05))
        started = time.monotonic()
        assert list(eventloop(conn, limit=3, timeout=0.05, ignore_timeouts=True)) == []
        assert time.monotonic() - started < 2
        queue = Queue(name)
        consumer = conn.Consumer([queue], callbacks=[lambda body, m: m.ack()])
        consumer.consume()
        Producer(conn).publish("tick", routing_key=name)
        assert list(eventloop(conn, limit=1, timeout=2)) == [None]


def test_send_reply_and_collect_replies_round_trip(url, name):
    requests = Queue(name)
    replies = Queue(name + ".replies")  # not auto_delete: it outlives each collecting consumer
    with Connection(url) as server, Connection(url) as client:
        maybe_declare(requests, server.default_channel)
        maybe_declare(replies, client.default_channel)
        Producer(client).publish(
            {"add": [2, 3]}, routing_key=name, reply_to=replies.name, correlation_id="corr-1"
        )
        for body, request in itermessages(server, None, requests, limit=1, timeout=2):
            send_reply(Exchange(""), request, {"sum": sum(body["add"])}, Producer(server))
            request.ack()
        got = list(collect_replies(client, client.default_channel, replies, limit=1, timeout=2))
        assert got == [{"sum": 5}]
        # a second request, answered on the request's own channel, read with its properties
        Producer(client).publish("again", routing_key=name, reply_to=replies.name, correlation_id="corr-2")
        for _, request in itermessages(server, None, requests, limit=1, timeout=2):
            send_reply("", request, "reply")
            request.ack()
        [(body, reply)] = list(itermessages(client, None, replies, limit=1, timeout=2))
        assert (body, reply.properties["correlation_id"]) == ("reply", "corr-2")
        reply.ack()


def test_collect_replies_acks_when_asked(url, name):
    replies = Queue(name)
    with Connection(url) as conn:
        Producer(conn).publish("r", routing_key=name, declare=[replies])
        assert list(collect_replies(conn, None, replies, limit=1, timeout=2, no_ack=False)) == ["r"]
        conn.close()
        conn.connect()
        assert conn.default_channel.queue_declare(name, passive=True).message_count == 0


def test_send_reply_needs_reply_to(url, name):
    with Connection(url) as conn:
        Producer(conn).publish("no reply_to", routing_key=name, declare=[Queue(name)])
        request = Queue(name).bind(conn).get()
        with pytest.raises(UsageError):
            send_reply("", request, "nowhere")


def test_declaration_cached(url, name):
    durable = Queue(name)
    with Connection(url) as conn:
        assert not declaration_cached(durable, conn)
        assert maybe_declare(durable, conn.default_channel) is True
        assert declaration_cached(durable, conn.default_channel)
        assert maybe_declare(durable, conn.default_channel) is False


def test_ignore_errors(url):
    with Connection(url) as conn:

        def broken():
            raise OperationalError("lost")

        assert ignore_errors(conn, broken) is None
        assert ignore_errors(conn, lambda a, b=0: a + b, 1, b=2) == 3
        with ignore_errors(conn):
            raise NotFound("channel error, ignored")
        with pytest.raises(ValueError, match="other"), ignore_errors(conn):
            raise ValueError("other errors pass")


def test_insured_retries_after_a_connection_error(url):
    pool = ConnectionPool(Connection(url), limit=1)
    calls = []

    def flaky(x, connection):
        calls.append(connection)
        if len(calls) == 1:
            raise OperationalError("dropped (simulated)")
        return x * 2

    errors = []
    result = insured(
        pool, flaky, (21,), {}, errback=lambda exc, interval: errors.append(exc), interval_start=0
    )
    assert result == 42
    assert len(calls) == 2
    assert len(errors) == 1
    assert pool.acquire() is calls[0]  # released afterwards
