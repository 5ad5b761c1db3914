"""At-least-once: a consumer that goes away without acking releases its messages, flagged redelivered."""

from __future__ import annotations

from kelp.aio import Connection, Queue

from .helpers import Names, consuming, declared, drain_for, payloads


async def test_consumer_leaving_without_ack_releases_messages_to_another(
    broker_url: str, names: Names
) -> None:
    async with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        bq = await declared(anchor, q)
        producer = anchor.Producer()
        await producer.publish({"job": 1}, routing_key=q.name)
        await producer.publish({"job": 2}, routing_key=q.name)

        leaver = Connection(broker_url)
        await leaver.connect()
        async with consuming(leaver, [q]) as inbox:
            assert await inbox.wait(leaver, 2)
            assert inbox.bodies == [{"job": 1}, {"job": 2}]
            assert [m.redelivered for m in inbox.messages] == [False, False]
            await inbox.messages[0].ack()
        await leaver.close()

        async with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert await inbox.wait(heir, 1)
            await drain_for(heir)
            assert inbox.bodies == [{"job": 2}]
            assert inbox.messages[0].redelivered is True
            assert inbox.messages[0].delivery_info["redelivered"] is True
            await inbox.messages[0].ack()
        assert await bq.get() is None


async def test_redelivered_message_keeps_body_and_properties(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        await declared(anchor, q)
        await anchor.Producer().publish(
            {"k": "v"}, routing_key=q.name, headers={"h": 1}, correlation_id="c-1", message_id="m-1"
        )
        async with Connection(broker_url) as leaver, consuming(leaver, [q]) as inbox:
            assert await inbox.wait(leaver, 1)
        async with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert await inbox.wait(heir, 1)
            message = inbox.messages[0]
            assert message.redelivered is True
            assert message.payload == {"k": "v"}
            assert message.headers["h"] == 1
            assert message.properties["correlation_id"] == "c-1"
            assert message.properties["message_id"] == "m-1"
            await message.ack()


async def test_messages_not_yet_delivered_are_not_flagged(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        await declared(anchor, q)
        producer = anchor.Producer()
        async with Connection(broker_url) as leaver, consuming(leaver, [q], prefetch_count=1) as inbox:
            for n in range(3):
                await producer.publish(n, routing_key=q.name)
            assert await inbox.wait(leaver, 1)
        async with Connection(broker_url) as heir, consuming(heir, [q]) as inbox:
            assert await inbox.wait(heir, 3)
            flags = {body: m.redelivered for body, m in zip(inbox.bodies, inbox.messages)}
            assert flags == {0: True, 1: False, 2: False}
            for message in inbox.messages:
                await message.ack()


async def test_recover_redelivers_unacked_to_the_same_consumer(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as conn:
        q = Queue(names("q"))
        async with consuming(conn, [q]) as inbox:
            producer = conn.Producer()
            await producer.publish("a", routing_key=q.name)
            await producer.publish("b", routing_key=q.name)
            assert await inbox.wait(conn, 2)
            await inbox.messages[0].ack()
            assert inbox.consumer is not None
            await inbox.consumer.recover(requeue=True)
            assert await inbox.wait(conn, 3)
            await drain_for(conn)
            assert inbox.bodies == ["a", "b", "b"]
            assert [m.redelivered for m in inbox.messages] == [False, False, True]
            await inbox.messages[2].ack()
        bq = Queue(q.name)(conn.default_channel)
        assert await bq.get() is None


async def test_connection_close_requeues_get_and_consume_alike(broker_url: str, names: Names) -> None:
    async with Connection(broker_url) as anchor:
        q = Queue(names("q"))
        bq = await declared(anchor, q)
        producer = anchor.Producer()
        for n in range(4):
            await producer.publish(n, routing_key=q.name)
        async with Connection(broker_url) as leaver:
            got = await Queue(q.name)(leaver.default_channel).get()
            assert got is not None
            assert got.payload == 0
            async with consuming(leaver, [q]) as inbox:
                assert await inbox.wait(leaver, 3)
        assert sorted(await payloads(bq, 4)) == [0, 1, 2, 3]
        assert await bq.get() is None
