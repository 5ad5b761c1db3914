"""Request/reply: the client names an exclusive reply queue in ``reply_to`` and tags each request with a
``correlation_id``; the server answers to that queue through the default exchange with the same id."""

from __future__ import annotations

from typing import Any

from kelp.aio import Connection, Exchange, Queue

from .helpers import Names, consuming


async def _serve(server: Any, requests: Any, reply: Any) -> None:
    """Answer every request received so far, in the order of ``requests.messages``."""
    producer = server.Producer()
    for message in requests.messages:
        await producer.publish(
            reply(message.payload),
            exchange="",
            routing_key=message.properties["reply_to"],
            correlation_id=message.properties["correlation_id"],
        )
        await message.ack()


async def test_request_reply_round_trip(broker_url: str, names: Names) -> None:
    rpc = Queue(names("rpc"))
    reply_queue = Queue(names("reply"), exclusive=True, auto_delete=True)
    async with (
        Connection(broker_url) as server,
        Connection(broker_url) as client,
        consuming(server, [rpc]) as requests,
        consuming(client, [reply_queue]) as replies,
    ):
        await client.Producer().publish(
            {"op": "add", "args": [2, 3]},
            routing_key=rpc.name,
            reply_to=reply_queue.name,
            correlation_id="req-1",
        )
        assert await requests.wait(server, 1)
        request = requests.messages[0]
        assert request.properties["reply_to"] == reply_queue.name
        assert request.properties["correlation_id"] == "req-1"
        await _serve(server, requests, lambda p: {"result": sum(p["args"])})
        assert await replies.wait(client, 1)
        assert replies.bodies == [{"result": 5}]
        assert replies.messages[0].properties["correlation_id"] == "req-1"
        await replies.messages[0].ack()


async def test_client_matches_replies_by_correlation_id(broker_url: str, names: Names) -> None:
    rpc_exchange = Exchange(names("rpc"), "direct")
    rpc = Queue(names("rpc"), rpc_exchange, routing_key="square")
    reply_queue = Queue(names("reply"), exclusive=True)
    async with (
        Connection(broker_url) as server,
        Connection(broker_url) as client,
        consuming(server, [rpc]) as requests,
        consuming(client, [reply_queue]) as replies,
    ):
        producer = client.Producer()
        pending = {}
        for n in range(5):
            correlation_id = f"id-{n}"
            pending[correlation_id] = n * n
            await producer.publish(
                n,
                exchange=rpc_exchange,
                routing_key="square",
                reply_to=reply_queue,  # a Queue stands for its name
                correlation_id=correlation_id,
            )
        assert await requests.wait(server, 5)
        # Reply out of order; the client must still pair each answer with its question.
        requests.messages.reverse()
        await _serve(server, requests, lambda p: p * p)
        assert await replies.wait(client, 5)
        answers = {m.properties["correlation_id"]: body for body, m in zip(replies.bodies, replies.messages)}
        assert answers == pending
        order = [m.properties["correlation_id"] for m in replies.messages]
        assert order == [f"id-{n}" for n in range(4, -1, -1)]
        for message in replies.messages:
            await message.ack()


async def test_server_named_reply_queue(broker_url: str, names: Names) -> None:
    rpc = Queue(names("rpc"))
    async with Connection(broker_url) as server, Connection(broker_url) as client:
        reply_name = await Queue("", exclusive=True)(client.default_channel).declare()
        async with (
            consuming(server, [rpc]) as requests,
            consuming(client, [Queue(reply_name, exclusive=True)], auto_declare=False) as replies,
        ):
            await client.Producer().publish(
                "ping", routing_key=rpc.name, reply_to=reply_name, correlation_id="p"
            )
            assert await requests.wait(server, 1)
            assert requests.messages[0].properties["reply_to"] == reply_name
            await _serve(server, requests, lambda p: "pong")
            assert await replies.wait(client, 1)
            assert replies.bodies == ["pong"]
            assert replies.messages[0].properties["correlation_id"] == "p"
            await replies.messages[0].ack()
