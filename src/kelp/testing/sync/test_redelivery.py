# Generated from src/kelp/testing/aio/test_redelivery.py by scripts/unasync.py; do not edit.
"""At-least-once: a consumer that goes away without acking releases its messages, flagged redelivered."""

from __future__ import annotations

from kelp import Connection, Queue

from .helpers import Names, consuming, declared, drain_for, payloads


def test_consumer_leaving_without_ack_releases_messages_to_another(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        bq = declared(anchor, q)
        producer = anchor.Producer()
        producer.publish({"job": 1}, routing_key=q.name)
        producer.publish({"job": 2}, routing_key=q.name)

        leaver = Connection(broker_url)
        leaver.connect()
        with consuming(leaver, [q]) as inbox:
            assert inbox.wait(leaver, 2)
            assert inbox.bodies == [{"job": 1}, {"job": 2}]
            assert [m.redelivered for m in inbox.messages] == [False, False]
            inbox.messages[0].ack()
        leaver.close()

        with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert inbox.wait(heir, 1)
            drain_for(heir)
            assert inbox.bodies == [{"job": 2}]
            assert inbox.messages[0].redelivered is True
            assert inbox.messages[0].delivery_info["redelivered"] is True
            inbox.messages[0].ack()
        assert bq.get() is None


def test_redelivered_message_keeps_body_and_properties(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        declared(anchor, q)
        anchor.Producer().publish(
            {"k": "v"}, routing_key=q.name, headers={"h": 1}, correlation_id="c-1", message_id="m-1"
        )
        with Connection(broker_url) as leaver, consuming(leaver, [q]) as inbox:
            assert inbox.wait(leaver, 1)
        with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert inbox.wait(heir, 1)
            message = inbox.messages[0]
            assert message.redelivered is True
            assert message.payload == {"k": "v"}
            assert message.headers["h"] == 1
            assert message.properties["correlation_id"] == "c-1"
            assert message.properties["message_id"] == "m-1"
            message.ack()


def test_messages_not_yet_delivered_are_not_flagged(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        declared(anchor, q)
        producer = anchor.Producer()
        with Connection(broker_url) as leaver, consuming(leaver, [q], prefetch_count=1) as inbox:
            for n in range(3):
                producer.publish(n, routing_key=q.name)
            assert inbox.wait(leaver, 1)
        with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert inbox.wait(heir, 3)
            flags = {body: m.redelivered for body, m in zip(inbox.bodies, inbox.messages)}
            assert flags == {0: True, 1: False, 2: False}
            for message in inbox.messages:
                message.ack()


def test_recover_redelivers_unacked_to_the_same_consumer(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as conn:
        q = Queue(names("q"))
        with consuming(conn, [q]) as inbox:
            producer = conn.Producer()
            producer.publish("a", routing_key=q.name)
            producer.publish("b", routing_key=q.name)
            assert inbox.wait(conn, 2)
            inbox.messages[0].ack()
            assert inbox.consumer is not None
            inbox.consumer.recover(requeue=True)
            assert inbox.wait(conn, 3)
            drain_for(conn)
            assert inbox.bodies == ["a", "b", "b"]
            assert [m.redelivered for m in inbox.messages] == [False, False, True]
            inbox.messages[2].ack()
        bq = Queue(q.name)(conn.default_channel)
        assert bq.get() is None


def test_connection_close_requeues_get_and_consume_alike(broker_url: str, names: Names) -> None:
    with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        bq = declared(anchor, q)
        producer = anchor.Producer()
        for n in range(4):
            producer.publish(n, routing_key=q.name)
        with Connection(broker_url) as leaver:
            got = Queue(q.name)(leaver.default_channel).get()
            assert got is not None
            assert got.payload == 0
            with consuming(leaver, [q]) as inbox:
                assert inbox.wait(leaver, 3)
        assert sorted(payloads(bq, 4)) == [0, 1, 2, 3]
        assert bq.get() is None
