"""Another process changes the broker between this process's operations: this process's long-lived
connections must see the change as RabbitMQ's clients do. A broker that kelp runs in the publishing or
consuming process (sqlite, postgres) keeps per-process state - a snapshot of the topology, claim floors,
consumers - that a change made elsewhere can leave stale; a single process cannot find such defects,
since all its connections share one store. See ``kit`` for process B, ``conftest`` for the fixtures.

Here: what another process changes under this process's consumers, and its exclusive queues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import kelp
from kelp.exceptions import ResourceLocked

from .kit import (
    WAIT,
    Held,
    Inbox,
    consumers_become,
    contents,
    declare_queue,
    drain_until_cancelled,
    error_of,
    exists,
    first_arrival,
    gone_within,
    known_defect,
    op,
    queue_declare,
    run_b,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

# --- B changes a queue A consumes ---------------------------------------------------------------------


def test_a_purge_by_another_process_leaves_the_unacked_to_their_consumer(url: str, names: Any) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        for body in ("one", "two", "three"):
            producer.publish(body, routing_key=queue)
        producer.flush()
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(queue)], callbacks=[inbox], prefetch_count=2):
            assert inbox.wait(conn, 2) == ["one", "two"]
            assert run_b(url, op("queue_purge", queue=queue)) == [1]  # only the ready one
            one, two = inbox.messages
            one.reject(requeue=True)
            two.ack()
            assert inbox.wait(conn, 3) == ["one", "two", "one"]
            again = inbox.messages[2]
            assert again.delivery_info["redelivered"]
            again.ack()
            producer.publish("four", routing_key=queue)
            assert inbox.wait(conn, 4)[3:] == ["four"]
            inbox.messages[3].ack()
        assert contents(conn, queue) == []


def test_a_queue_deleted_by_another_process_cancels_its_consumer(url: str, names: Any) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        for body in ("one", "two", "three"):
            producer.publish(body, routing_key=queue)
        producer.flush()
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(queue)], callbacks=[inbox], prefetch_count=2) as consumer:
            assert inbox.wait(conn, 2) == ["one", "two"]
            assert run_b(url, op("queue_delete", queue=queue)) == [1]
            cancelled = drain_until_cancelled(conn)
            assert cancelled is not None
            assert queue in str(cancelled)
            assert consumer.active_queues == []
            # settling what the deleted queue delivered is no error, and brings nothing back
            one, two = inbox.messages
            one.ack()
            two.reject(requeue=True)
        assert not exists(conn, queue)


def test_a_queue_deleted_and_declared_again_by_another_process_cancels_its_consumer(
    url: str, names: Any
) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        for body in ("one", "two"):
            producer.publish(body, routing_key=queue)
        producer.flush()
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(queue)], callbacks=[inbox], prefetch_count=1):
            assert inbox.wait(conn, 1) == ["one"]
            run_b(url, op("queue_delete", queue=queue), queue_declare(queue))
            producer.publish("new", routing_key=queue)
            producer.flush()
            cancelled = drain_until_cancelled(conn)
            assert cancelled is not None
            assert queue in str(cancelled)
            inbox.messages[0].reject(requeue=True)  # its queue is gone: nothing comes back
            assert [m.payload for m in inbox.messages] == ["one"]
        # the new queue has the new message, and no consumer took it
        assert contents(conn, queue) == ["new"]


@pytest.mark.parametrize("ending", ["exits", "killed"])
def test_a_message_another_process_gives_back_reaches_a_waiting_consumer(
    url: str, names: Any, ending: str
) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("taken", routing_key=queue)
        producer.flush()
        other = Held(url, op("get", queue=queue))
        try:
            assert other.result == ["taken"]
            for body in ("two", "three"):
                producer.publish(body, routing_key=queue)
            producer.flush()
            inbox = Inbox()
            with conn.Consumer([kelp.Queue(queue)], callbacks=[inbox], prefetch_count=1):
                for n in (1, 2):  # the consumer has taken, and acked, every copy after the one B holds
                    inbox.wait(conn, n)
                    inbox.messages[-1].ack()
                assert [m.payload for m in inbox.messages] == ["two", "three"]
                if ending == "exits":  # B ends without acking: its message comes back
                    other.release()
                else:
                    other.kill()
                assert inbox.wait(conn, 3)[2:] == ["taken"]
                assert inbox.messages[2].delivery_info["redelivered"]
                inbox.messages[2].ack()
        finally:
            other.close()


@pytest.mark.parametrize("ending", ["exits", "killed"])
def test_an_auto_delete_queue_stays_while_this_process_consumes_it(
    url: str, names: Any, held: Callable[..., Held], ending: str
) -> None:
    queue = names("auto")
    with kelp.Connection(url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=True)
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(queue, auto_delete=True)], callbacks=[inbox]) as consumer:
            other = held(url, op("consume", queue=queue))
            if ending == "exits":
                other.release()
            else:
                other.kill()
            # its consumer goes (a killed one: once its death is noticed), the queue stays: this one consumes
            assert consumers_become(conn, queue, 1)
            conn.Producer().publish("still", routing_key=queue)
            assert inbox.wait(conn, 1) == ["still"]
            inbox.messages[0].ack()
            consumer.cancel()
            assert gone_within(conn, queue, WAIT) is not None


def test_another_process_cannot_delete_this_process_exclusive_queue(url: str, names: Any) -> None:
    queue = names("excl")
    with kelp.Connection(url) as conn:
        conn.channel().queue_declare(queue, durable=False, exclusive=True, auto_delete=False)
        assert run_b(url, op("queue_delete", queue=queue), op("queue_purge", queue=queue)) == [
            "ResourceLocked",
            "ResourceLocked",
        ]
        assert exists(conn, queue)


def test_kombu_declares_again_a_consumed_queue_another_process_deleted(
    url: str, names: Any, request: pytest.FixtureRequest
) -> None:
    """kelp.kombu answers the declaration of a queue that a connection of this process consumes from
    without asking the broker (Celery declares its reply queue before every task)."""
    kombu = pytest.importorskip("kombu")
    import kelp.kombu  # registers kelp+ URLs

    known_defect(
        request,
        url,
        ("sqlite", "postgresql", "redis"),
        "kelp.kombu's known-queue answer outlives the queue: another process deleted it and this process "
        "has not drained the consumer's cancellation yet, so the declaration does not create it again "
        "and what is published to it next is dropped",
    )
    kombu_url = "py" + url if url.startswith("amqp") else "kelp+" + url
    name = names("reply")
    with kombu.Connection(kombu_url) as consuming, kombu.Connection(kombu_url) as declaring:
        queue = kombu.Queue(name, durable=True, auto_delete=False)
        queue(declaring.default_channel).declare()
        consumer = kombu.Consumer(consuming, [queue], callbacks=[lambda body, message: None])
        consumer.consume()
        assert queue(declaring.default_channel).queue_declare().consumer_count == 1
        run_b(url, op("queue_delete", queue=name))
        queue(declaring.default_channel).declare()  # RabbitMQ creates it again
        kombu.Producer(declaring.default_channel).publish("reply", routing_key=name)
    with kelp.Connection(url) as conn:
        assert wait_for(conn, name, 1)[0].payload == "reply"


def test_a_message_another_process_publishes_expires_to_a_waiting_consumer(url: str, names: Any) -> None:
    queue, dlx, dead = names("q"), names("dlx"), names("dead")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(dlx, "fanout", durable=True, auto_delete=False)
        declare_queue(conn, dead)
        channel.queue_bind(dead, dlx, "")
        declare_queue(conn, queue, **{"x-message-ttl": 300, "x-dead-letter-exchange": dlx})
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(dead)], callbacks=[inbox]):
            try:
                conn.drain_events(timeout=0.1)  # waiting, with no deadline in sight
            except TimeoutError:
                pass
            other = Held(url, op("go"), op("publish", body="expiring", routing_key=queue))
            try:
                other.go()  # B publishes while this process waits
                waited = first_arrival(conn, inbox)
            finally:
                other.close()
            assert waited is not None, "the expired message never reached the waiting consumer"
            assert waited < 2.0
            assert inbox.messages[0].headers["x-death"][0]["reason"] == "expired"
            inbox.messages[0].ack()


def test_a_delayed_message_another_process_publishes_reaches_a_waiting_consumer_when_due(
    url: str, names: Any
) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(queue)], callbacks=[inbox]):
            try:
                conn.drain_events(timeout=0.1)  # waiting, with no deadline in sight
            except TimeoutError:
                pass
            other = Held(url, op("go"), op("publish", body="later", routing_key=queue, countdown=1.0))
            try:
                other.go()  # B publishes while this process waits
                waited = first_arrival(conn, inbox)
            finally:
                other.close()
            assert waited is not None, "the delayed message never reached the waiting consumer"
            assert 0.9 <= waited < 2.5
            inbox.messages[0].ack()


def test_a_message_another_process_rejects_dead_letters_to_a_waiting_consumer(url: str, names: Any) -> None:
    queue, dlx, dead = names("q"), names("dlx"), names("dead")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(dlx, "fanout", durable=True, auto_delete=False)
        declare_queue(conn, dead)
        channel.queue_bind(dead, dlx, "")
        declare_queue(conn, queue, **{"x-dead-letter-exchange": dlx})
        producer = conn.Producer()
        producer.publish("rejected", routing_key=queue)
        producer.flush()
        inbox = Inbox()
        with conn.Consumer([kelp.Queue(dead)], callbacks=[inbox]):
            try:
                conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass
            other = Held(url, op("get", queue=queue), op("go"), op("reject", requeue=False))
            try:
                assert other.result == ["rejected"]
                other.go()  # B rejects while this process waits
                waited = first_arrival(conn, inbox)
                assert waited is not None, "the dead letter never reached the waiting consumer"
                assert waited < 2.0
                assert inbox.messages[0].headers["x-death"][0]["reason"] == "rejected"
                inbox.messages[0].ack()
            finally:
                other.close()


# --- exclusive queues of another process ---------------------------------------------------------------


@pytest.mark.parametrize("ending", ["exits", "killed"])
def test_another_process_exclusive_queue_is_locked_and_goes_with_it(
    url: str, names: Any, held: Callable[..., Held], ending: str
) -> None:
    queue = names("excl")
    owner = held(
        url,
        op("queue_declare", queue=queue, durable=False, exclusive=True, auto_delete=False),
    )
    with kelp.Connection(url) as conn:
        assert error_of(lambda: declare_queue(conn, queue)) is ResourceLocked
        assert error_of(lambda: conn.channel().queue_declare(queue, passive=True)) is ResourceLocked
        assert error_of(lambda: kelp.Queue(queue)(conn.channel()).get()) is ResourceLocked
        consumer = conn.Consumer([kelp.Queue(queue)], auto_declare=False)
        assert error_of(consumer.consume) is ResourceLocked
        # publishing to it is allowed
        producer = conn.Producer()
        producer.publish("to the owner", routing_key=queue)
        producer.flush()
        if ending == "exits":
            owner.release()
        else:
            owner.kill()
        assert gone_within(conn, queue, 5.0 if ending == "exits" else 12.0) is not None
        # and the name is free again
        declare_queue(conn, queue)
        assert contents(conn, queue) == []
