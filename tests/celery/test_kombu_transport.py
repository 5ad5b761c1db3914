"""kelp.kombu under plain Kombu: URLs, publish/consume, acks, prefetch, fanout, and the errors."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import kombu
import pytest

import kelp.kombu
from kelp.exceptions import ConsumerCancelled, PreconditionFailed, UnsupportedTransport, UsageError


def _memory_url() -> str:
    return f"kelp+memory://{uuid.uuid4().hex[:8]}"


def _drain(connection: kombu.Connection, limit: int = 100) -> None:
    for _ in range(limit):
        try:
            connection.drain_events(timeout=0.2)
        except TimeoutError:
            return


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _memory_url() if request.param == "memory" else f"kelp+sqlite:///{tmp_path}/k.db"


def test_publish_and_consume_through_an_exchange(url: str) -> None:
    exchange = kombu.Exchange("jobs", "topic")
    queue = kombu.Queue("jobs.eu", exchange, routing_key="eu.#")
    with kombu.Connection(url) as publisher, kombu.Connection(url) as consumer_connection:
        with publisher.Producer() as producer:
            producer.publish({"n": 1}, exchange=exchange, routing_key="eu.fr", declare=[queue])
            producer.publish({"n": 2}, exchange=exchange, routing_key="us.ny")  # no binding: dropped
            producer.publish({"n": 3}, exchange=exchange, routing_key="eu", headers={"h": "v"}, priority=3)
        got: list[tuple[object, kombu.Message]] = []
        with consumer_connection.Consumer(queue, callbacks=[lambda body, m: got.append((body, m))]):
            _drain(consumer_connection)
        assert [body for body, _ in got] == [{"n": 1}, {"n": 3}]
        message = got[1][1]
        assert message.headers == {"h": "v"}
        assert message.properties["priority"] == 3
        assert message.delivery_info["routing_key"] == "eu"
        assert message.delivery_info["redelivered"] is False
        for _, m in got:
            m.ack()


def test_unacked_messages_return_redelivered_when_the_connection_closes(url: str) -> None:
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("work")
        queue.put("a")
        assert queue.get(timeout=1).payload == "a"  # not acked
        queue.close()
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("work")
        message = queue.get(timeout=2)
        assert message.payload == "a"
        assert message.delivery_info["redelivered"] is True
        message.ack()
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.2)
        queue.close()


def test_requeue_reject_get_purge_and_delete(url: str) -> None:
    with kombu.Connection(url) as connection:
        channel = connection.channel()
        queue = kombu.Queue("q", kombu.Exchange("x"), "k")(channel)
        queue.declare()
        producer = kombu.Producer(channel, exchange=queue.exchange, routing_key="k")
        for i in range(4):
            producer.publish(i)
        first = queue.get()
        first.requeue()
        again = queue.get()
        assert (again.payload, again.delivery_info["redelivered"]) == (0, True)
        again.reject()  # dropped: no dead-letter exchange
        assert queue.get(no_ack=True).payload == 1
        assert queue.purge() == 2
        assert queue.get() is None
        assert channel.queue_delete("q") == 0
        channel.close()


def test_prefetch_limits_unacked_deliveries(url: str) -> None:
    with kombu.Connection(url) as connection:
        queue = kombu.Queue("prefetched", kombu.Exchange("p"), "p")
        with connection.Producer() as producer:
            for i in range(10):
                producer.publish(i, exchange=queue.exchange, routing_key="p", declare=[queue])
        got: list[kombu.Message] = []
        with connection.Consumer(queue, callbacks=[lambda _, m: got.append(m)], prefetch_count=3):
            _drain(connection)
            assert len(got) == 3
            got[0].ack()
            _drain(connection)
            assert len(got) == 4


def test_fanout_reaches_every_bound_queue(url: str) -> None:
    exchange = kombu.Exchange("broadcast", "fanout", durable=False)
    queues = [kombu.Queue(f"node{i}", exchange, auto_delete=True) for i in range(3)]
    with kombu.Connection(url) as connection:
        got: list[str] = []
        with connection.Consumer(
            queues, callbacks=[lambda _, m: got.append(m.delivery_info["consumer_tag"])], no_ack=True
        ):
            with connection.Producer() as producer:
                producer.publish("hello", exchange=exchange, delivery_mode="transient")
            _drain(connection)
        assert len(got) == 3
        assert len(set(got)) == 3


def test_transport_by_class_path_with_a_plain_kelp_url(tmp_path: Path) -> None:
    with kombu.Connection(f"sqlite:///{tmp_path}/plain.db", transport="kelp.kombu:Transport") as connection:
        queue = connection.SimpleQueue("plain")
        queue.put("x")
        assert queue.get(timeout=1).payload == "x"
        queue.close()
        assert connection.transport.driver_type == "kelp"


def test_as_uri_masks_the_password() -> None:
    connection = kombu.Connection("kelp+amqp://user:secret@example.com:5672//")
    assert connection.as_uri() == "kelp+amqp://user:**@example.com:5672//"
    assert "secret" in connection.as_uri(include_password=True)


def test_an_unknown_kelp_url_is_one_clear_error() -> None:
    with pytest.raises(UnsupportedTransport, match=r"unknown transport 'foo'.*memory.*sqlite"):
        kombu.Connection("kelp+foo://host/").connect()
    with pytest.raises(UsageError, match="needs a kelp URL"):
        kombu.Connection("localhost", transport="kelp").connect()


def test_without_kombu_the_import_names_the_extra() -> None:
    code = "import sys; sys.modules['kombu'] = None\nimport kelp.kombu"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ImportError: kelp.kombu is a Kombu transport and needs Kombu: pip install 'kelp[kombu]'" in (
        result.stderr
    )


def test_the_alias_is_registered_on_import() -> None:
    from kombu.transport import resolve_transport

    assert resolve_transport("kelp") is kelp.kombu.Transport


def test_a_connection_kombu_gives_up_on_is_closed_and_its_unacked_messages_return(url: str) -> None:
    connection = kombu.Connection(url)
    queue = connection.SimpleQueue("given-up")
    queue.put("a")
    assert queue.get(timeout=1).payload == "a"  # not acked
    kelp_connection = connection.connection
    connection.collect()  # what Kombu's ensure() does after a connection error
    assert not kelp_connection.is_connected
    with kombu.Connection(url) as other:
        again = other.SimpleQueue("given-up").get(timeout=2)
        assert (again.payload, again.delivery_info["redelivered"]) == ("a", True)
        again.ack()


def test_a_lost_connections_unconfirmed_publishes_go_out_on_the_next(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = kombu.Connection(url)
    queue = kombu.Queue("outbox", kombu.Exchange("outbox"), "o")
    queue(connection.default_channel).declare()
    lost = connection.connection
    envelope = connection.default_channel.prepare_message(b'"kept"', content_type="application/json")
    envelope.exchange, envelope.routing_key = "outbox", "o"
    # The broker had not confirmed this publish when the connection was lost.
    monkeypatch.setattr(lost, "unconfirmed", lambda: [envelope])
    connection.collect()
    monkeypatch.undo()
    connection.connect()
    message = queue(connection.default_channel).get()
    assert message is not None
    assert message.payload == "kept"
    message.ack()
    connection.close()


def test_a_forked_child_collecting_leaves_the_parents_connection_alone(tmp_path: Path) -> None:
    url = f"kelp+sqlite:///{tmp_path}/fork.db"
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("forked")
        queue.put("held")
        held = queue.get(timeout=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (Python >= 3.12)
            pid = os.fork()
        if pid == 0:  # the child: what Celery's prefork pool does with inherited connections
            try:
                connection.collect()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert connection.connection.is_connected
        with kombu.Connection(url) as other, pytest.raises(queue.Empty):
            other.SimpleQueue("forked").get(timeout=0.5)  # still held by the parent, not released
        held.ack()
        queue.close()


def test_kombu_settings_reach_the_kelp_transport() -> None:
    options = {"confirm_publish": True, "max_retries": 3, "interval_start": 0}
    connection = kombu.Connection(_memory_url(), transport_options=options, heartbeat=5, ssl=False)
    with connection:
        kelp_options = connection.connection.options
        assert kelp_options["confirm_publish"] is True
        assert kelp_options["heartbeat"] == 5
        assert "max_retries" not in kelp_options  # Kombu's retry policy, not a kelp option


def test_a_broker_that_cannot_be_reached_is_retried_as_a_connection_error(tmp_path: Path) -> None:
    connection = kombu.Connection(f"kelp+sqlite:///{tmp_path}/missing/dir/x.db")
    errors: list[Exception] = []
    with pytest.raises(kombu.exceptions.OperationalError, match="does not exist"):
        connection.ensure_connection(max_retries=2, interval_start=0, errback=lambda e, _: errors.append(e))
    assert len(errors) == 2


def test_drain_events_hands_over_one_delivery_per_call(url: str) -> None:
    # Kombu's contract: Celery's rpc:// result consumer drains until its own result has come, and
    # keeps only so many others; a call that handed over a whole batch overflowed it.
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("one-by-one", no_ack=True)
        for i in range(5):
            queue.put(i)
        got: list[int] = []
        with connection.Consumer(queue.queue, callbacks=[lambda body, _: got.append(body)], no_ack=True):
            for expected in range(1, 6):
                connection.drain_events(timeout=1)
                assert got == list(range(expected))
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.1)
        queue.close()


def _count_declarations(channel: kelp.kombu.Channel) -> list[str]:
    reached: list[str] = []
    declare = channel.kelp_channel.declare_queue

    def counting(name: str, *args: object) -> object:
        reached.append(name)
        return declare(name, *args)  # type: ignore[arg-type]

    channel.kelp_channel.declare_queue = counting  # type: ignore[method-assign]
    return reached


def test_declaring_a_queue_this_connection_consumes_again_skips_the_broker(url: str) -> None:
    # Celery's client declares its reply queue before every task: one broker round trip each.
    queue = kombu.Queue("replies", auto_delete=True)
    with kombu.Connection(url) as connection:
        channel = connection.default_channel
        reached = _count_declarations(channel)
        queue(channel).declare()
        queue(channel).declare()  # nobody consumes it yet: asked again
        assert reached == ["replies", "replies"]
        consumer = connection.Consumer(queue, callbacks=[lambda body, m: None], no_ack=True)
        consumer.consume()
        reached.clear()
        for _ in range(3):
            assert queue(channel).declare() == "replies"
        assert reached == ["replies"]  # the first one since it is consumed; then known
        reached.clear()
        # Celery declares it on its producer's connection, next to the consuming one.
        with kombu.Connection(url) as producer_connection:
            other = producer_connection.default_channel
            reached_other = _count_declarations(other)
            queue(other).declare()
            queue(other).declare()
            assert reached_other == []
            exclusive = kombu.Queue("mine", exclusive=True)
            exclusive(channel).declare()
            exclusive_consumer = connection.Consumer(exclusive, callbacks=[lambda body, m: None], no_ack=True)
            exclusive_consumer.consume()
            exclusive(channel).declare()  # exclusive queues are always the broker's to judge
            assert reached == ["mine", "mine", "mine"]
            exclusive_consumer.cancel()
            reached.clear()
        consumer.cancel()
        queue(channel).declare()  # no consumer left: asked again
        assert reached == ["replies"]
        consumer.consume()
        queue(channel).declare()
        reached.clear()
        # Other options are the broker's to judge.
        with pytest.raises(PreconditionFailed):
            kombu.Queue("replies", auto_delete=False, durable=True)(channel).declare()
        assert reached == ["replies"]


def test_a_consumed_queue_deleted_elsewhere_is_declared_again_at_the_broker(url: str) -> None:
    queue = kombu.Queue("doomed", auto_delete=False)
    with kombu.Connection(url) as connection, kombu.Connection(url) as other:
        channel = connection.default_channel
        queue(channel).declare()
        consumer = connection.Consumer(queue, callbacks=[lambda body, m: None], no_ack=True)
        consumer.consume()
        queue(other.default_channel).delete()
        with pytest.raises(ConsumerCancelled):
            connection.drain_events(timeout=2)
        reached = _count_declarations(channel)
        queue(channel).declare()
        assert reached == ["doomed"]
        with other.Producer() as producer:
            producer.publish("again", routing_key="doomed", mandatory=True)


def test_a_forked_child_does_not_trust_its_parents_consumers(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = kombu.Queue("parent-replies", auto_delete=True)
    with kombu.Connection(url) as connection:
        channel = connection.default_channel
        consumer = connection.Consumer(queue, callbacks=[lambda body, m: None], no_ack=True)
        consumer.consume()
        queue(channel).declare()
        reached = _count_declarations(channel)
        queue(channel).declare()
        assert reached == []
        child_pid = os.getpid() + 1
        monkeypatch.setattr(kelp.kombu.os, "getpid", lambda: child_pid)
        queue(channel).declare()  # in a child, the parent's consumer vouches for nothing
        assert reached == ["parent-replies"]
        monkeypatch.undo()
        consumer.cancel()


def test_a_delivery_for_a_cancelled_no_ack_consumer_is_dropped_without_settling(url: str) -> None:
    # Celery's pidbox reply consumer (no_ack) is cancelled while replies may still be on their way.
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("late-replies", no_ack=True)
        for i in range(3):
            queue.put(i)
        got: list[int] = []
        consumer = connection.Consumer(queue.queue, callbacks=[lambda body, _: got.append(body)], no_ack=True)
        consumer.consume()
        connection.drain_events(timeout=1)
        consumer.cancel()
        _drain(connection)  # the rest of the batch reaches no callback and settles nothing
        assert got[:1] == [0]
        connection.default_channel.basic_qos(0, 10, False)  # the channel is still usable
        queue.close()
