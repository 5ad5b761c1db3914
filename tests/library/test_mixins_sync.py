"""ConsumerMixin / ConsumerProducerMixin, sync face: the run loop in a thread."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from kelp import Connection, Exchange, Producer, Queue
from kelp.exceptions import OperationalError
from kelp.mixins import ConsumerMixin, ConsumerProducerMixin
from kelp.simple import SimpleQueue

WAIT = 5.0


class Worker(ConsumerMixin):
    restart_interval_start = 0.05

    def __init__(self, connection, queue, fail_first=0):
        self.connection = connection
        self.queue = queue
        self.bodies = []
        self.done = threading.Event()
        self.expected = 0
        self.fail_first = fail_first
        self.revived = 0
        self.ready = threading.Event()
        self.ended = 0

    def get_consumers(self, Consumer, channel):
        if self.fail_first:
            self.fail_first -= 1
            raise OperationalError("broker went away (simulated)")
        return [Consumer(queues=[self.queue], callbacks=[self.on_task], prefetch_count=10)]

    def on_task(self, body, message):
        self.bodies.append(body)
        message.ack()
        if len(self.bodies) >= self.expected:
            self.done.set()

    def on_connection_revived(self):
        self.revived += 1

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        assert consumers
        assert all(c.active_queues for c in consumers)
        self.ready.set()

    def on_consume_end(self, connection, channel):
        self.ended += 1


def _start(worker, **kwargs):
    thread = threading.Thread(target=worker.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def _stop(worker, thread):
    worker.should_stop = True
    thread.join(WAIT)
    assert not thread.is_alive(), "run() did not return after should_stop"


def _publish(url, queue, bodies):
    with Connection(url) as conn:
        producer = Producer(conn)
        for body in bodies:
            producer.publish(
                body, exchange=queue.exchange, routing_key=queue.routing_key or queue.name, declare=[queue]
            )


def test_run_processes_messages_and_stops(url, name):
    queue = Queue(name, Exchange(name), name)
    with Connection(url) as conn:
        worker = Worker(conn, queue)
        worker.expected = 5
        thread = _start(worker, safety_interval=0.1)
        try:
            assert worker.ready.wait(WAIT)
            _publish(url, queue, range(5))
            assert worker.done.wait(WAIT)
        finally:
            started = time.monotonic()
            _stop(worker, thread)
        assert time.monotonic() - started < 1.0  # bounded by safety_interval
        assert worker.bodies == [0, 1, 2, 3, 4]
        assert worker.revived == 1
        assert worker.ended == 1
        # every message was acked: nothing is left
        assert conn.default_channel.queue_declare(name, passive=True).message_count == 0


def test_run_restarts_after_a_connection_error(url, name):
    queue = Queue(name)
    with Connection(url) as conn:
        worker = Worker(conn, queue, fail_first=2)
        worker.expected = 1
        thread = _start(worker, safety_interval=0.1)
        try:
            assert worker.ready.wait(WAIT)
            _publish(url, queue, ["after restart"])
            assert worker.done.wait(WAIT)
        finally:
            _stop(worker, thread)
        assert worker.bodies == ["after restart"]
        assert worker.revived == 3  # two failed starts, then the good one


def test_connection_errors_call_on_connection_error_with_backoff(url, name):
    calls = []

    class Flaky(Worker):
        connect_max_retries = 2
        connect_interval_start = 0.01
        connect_interval_step = 0.01

        def create_connection(self):
            broken = Connection("memory://")
            broken.transport_cls = _Unreachable  # every connect attempt fails
            return broken

        def on_connection_error(self, exc, interval):
            calls.append(interval)

    worker = Flaky(Connection(url), Queue(name))
    with pytest.raises(OperationalError), worker.establish_connection():
        pass
    assert calls == [0.01, 0.02]


class _Unreachable:
    connection_errors = (OperationalError, OSError)

    def __init__(self, *args):
        pass

    def connect(self, timeout):
        raise OperationalError("unreachable (simulated)")

    def close(self):
        pass


def test_consume_generator_limit_and_timeout(url, name):
    queue = Queue(name)
    with Connection(url) as conn:
        worker = Worker(conn, queue)
        _publish(url, queue, ["a", "b"])
        batches = list(worker.consume(limit=1, safety_interval=0.2))
        assert len(batches) == 1
        assert worker.bodies == ["a", "b"]  # one batch carried both
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            for _ in worker.consume(timeout=0.3, safety_interval=0.1):
                pass
        assert time.monotonic() - started < 3


def test_undecodable_message_is_logged_and_acked(url, name):
    queue = Queue(name)
    with Connection(url) as conn:
        worker = Worker(conn, queue)
        with Connection(url) as other:
            Producer(other).publish(
                b"\x00", routing_key=name, content_type="application/x-nope", declare=[queue]
            )
        list(worker.consume(limit=1, safety_interval=0.2))
        assert worker.bodies == []
        assert conn.default_channel.queue_declare(name, passive=True).message_count == 0


class Server(ConsumerProducerMixin):
    def __init__(self, connection, queue):
        self.connection = connection
        self.queue = queue
        self.ready = threading.Event()
        self.producer_connections = []

    def get_consumers(self, Consumer, channel):
        return [Consumer(queues=[self.queue], on_message=self.handle)]

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self.ready.set()

    def handle(self, message):
        producer = self.producer
        self.producer_connections.append(producer.connection)
        producer.publish(
            {"echo": message.payload},
            exchange="",
            routing_key=message.properties["reply_to"],
            correlation_id=message.properties["correlation_id"],
            retry=True,
        )
        message.ack()


def test_consumer_producer_mixin_replies_on_its_own_connection(url, name):
    requests = Queue(name)
    with Connection(url) as conn:
        server = Server(conn, requests)
        thread = _start(server, safety_interval=0.1)
        try:
            assert server.ready.wait(WAIT)
            with Connection(url) as client, SimpleQueue(client, name + ".reply") as replies:
                for n in range(3):
                    Producer(client).publish(
                        n,
                        routing_key=name,
                        reply_to=replies.queue.name,
                        correlation_id=f"c{n}",
                        declare=[requests],
                    )
                got = []
                for _ in range(3):
                    reply = replies.get(timeout=WAIT)
                    got.append((reply.payload, reply.properties["correlation_id"]))
                    reply.ack()
                assert got == [({"echo": n}, f"c{n}") for n in range(3)]
        finally:
            _stop(server, thread)
        producer_conn = server.producer_connections[0]
        assert all(c is producer_conn for c in server.producer_connections)  # one, reused
        assert producer_conn is not conn
        assert not producer_conn.connected  # closed when consuming ended
        assert server._producer_connection is None
