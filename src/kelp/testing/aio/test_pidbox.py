"""Process mailboxes (``kelp.pidbox``): commands to every node or to named ones, replies gathered by ticket.

The nodes and the client share one connection here, so that the client's wait for replies is also what runs
the nodes' handlers (no threads or tasks needed). Across processes: tests/library/test_pidbox_processes.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from kelp.aio import Connection
from kelp.aio.pidbox import Mailbox, Node
from kelp.exceptions import UsageError

from .helpers import drain_for, queue_exists, queue_gone

pytestmark = pytest.mark.kelp_needs("fanout", "ttl", "queue_expiry")


def _namespace() -> str:
    return f"app-{uuid.uuid4().hex[:10]}"


async def _nodes(conn: Connection, mailbox: Mailbox, count: int = 3) -> list[Node]:
    nodes = []
    for n in range(count):
        node = mailbox(conn).Node(f"node{n}", state={"name": f"node{n}", "seen": []})

        @node.handler
        def ping(state: Any, value: Any = 0) -> Any:
            state["seen"].append(value)
            return {"pong": value, "from": state["name"]}

        @node.handler
        def fail(state: Any) -> None:
            raise RuntimeError("handler failed")

        await node.listen()
        nodes.append(node)
    return nodes


def _merged(replies: Any) -> Any:
    merged = {}
    for reply in replies:
        merged.update(reply)
    return merged


async def test_multi_call_reaches_every_node(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        await _nodes(conn, mailbox)
        replies = await mailbox(conn).multi_call("ping", {"value": 7}, timeout=1)
        assert replies is not None
        assert len(replies) == 3
        assert _merged(replies) == {f"node{n}": {"pong": 7, "from": f"node{n}"} for n in range(3)}


async def test_call_reaches_only_the_named_nodes(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        nodes = await _nodes(conn, mailbox)
        replies = await mailbox(conn).call(["node0", "node2"], "ping", {"value": 1}, timeout=2)
        assert _merged(replies) == {
            "node0": {"pong": 1, "from": "node0"},
            "node2": {"pong": 1, "from": "node2"},
        }
        assert nodes[1].state["seen"] == []


async def test_cast_and_abcast_run_without_replies(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        nodes = await _nodes(conn, mailbox)
        client = mailbox(conn)
        await client.cast(["node1"], "ping", {"value": 5})  # returns None: no reply is awaited
        await client.abcast("ping", {"value": 6})
        await drain_for(conn, 0.5)
        assert [node.state["seen"] for node in nodes] == [[6], [5, 6], [6]]


async def test_pattern_selects_nodes_by_hostname(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        await _nodes(conn, mailbox)
        client = mailbox(conn)
        globbed = await client._broadcast(
            "ping", {}, reply=True, timeout=1, pattern="node[01]", matcher="glob"
        )
        assert sorted(_merged(globbed)) == ["node0", "node1"]
        regexed = await client._broadcast("ping", {}, reply=True, timeout=1, pattern="node2$", matcher="pcre")
        assert sorted(_merged(regexed)) == ["node2"]


async def test_a_failing_handler_replies_with_its_error(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        await _nodes(conn, mailbox, count=1)
        replies = await mailbox(conn).call(["node0"], "fail", timeout=2)
        assert replies == [{"node0": {"error": "RuntimeError('handler failed')"}}]
        unknown = await mailbox(conn).call(["node0"], "no_such_command", timeout=2)
        assert unknown == [{"node0": {"error": "KeyError('no_such_command')"}}]


async def test_no_node_means_no_replies_after_the_timeout(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        assert await mailbox(conn).multi_call("ping", timeout=0.3) == []
        assert await mailbox(conn).call(["absent"], "ping", timeout=0.3) == []


async def test_async_and_callback_replies(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as conn:
        await _nodes(conn, mailbox, count=2)
        seen: list[Any] = []
        replies = await mailbox(conn).multi_call("ping", {"value": 3}, timeout=1, callback=seen.append)
        assert replies is not None
        assert sorted(map(str, seen)) == sorted(map(str, replies))
        assert len(replies) == 2


async def test_clocks_move_with_messages(broker_url: str) -> None:
    node_box, client_box = Mailbox(_namespace()), None
    async with Connection(broker_url) as conn:
        node = node_box(conn).Node("node0", handlers={"ping": lambda state: "pong"})
        await node.listen()
        client_box = Mailbox(node_box.namespace)
        client_box.clock.value = 100
        assert await client_box(conn).call(["node0"], "ping", timeout=2) == [{"node0": "pong"}]
        # The node jumped past the request's clock (101), and the client past the reply's.
        assert node_box.clock.value > 101
        assert client_box.clock.value > node_box.clock.value - 1


async def test_a_second_node_of_the_same_name_is_refused(broker_url: str) -> None:
    mailbox = Mailbox(_namespace())
    async with Connection(broker_url) as first, Connection(broker_url) as second:
        await mailbox(first).Node("twin").listen()
        with pytest.raises(Exception) as caught:  # noqa: PT011 - ResourceLocked or InconsistencyError
            await mailbox(second).Node("twin").listen()
        assert type(caught.value).__name__ in {"InconsistencyError", "ResourceLocked"}


async def test_reply_queue_expires_when_unused(broker_url: str) -> None:
    mailbox = Mailbox(
        _namespace(), queue_exclusive=False, queue_durable=True, reply_queue_expires=0.3, reply_queue_ttl=5
    )
    async with Connection(broker_url) as conn:
        client = mailbox(conn)
        reply_queue = client.reply_queue
        assert reply_queue.arguments["x-expires"] == 300
        assert reply_queue.arguments["x-message-ttl"] == 5000
        assert await client.multi_call("ping", timeout=0.1) == []
        assert await queue_exists(conn, reply_queue.name)
        assert await queue_gone(conn, reply_queue.name, timeout=5.0, interval=0.5)


def test_mailbox_names_and_bad_arguments() -> None:
    mailbox = Mailbox("celery")
    assert mailbox.exchange.name == "celery.pidbox"
    assert mailbox.exchange.type == "direct"
    assert mailbox.reply_exchange.name == "reply.celery.pidbox"
    assert mailbox.get_queue("w1").name == "w1.celery.pidbox"
    assert mailbox.reply_queue.name == f"{mailbox.oid}.reply.celery.pidbox"
    assert mailbox.reply_queue.routing_key == mailbox.oid
    assert Mailbox("x", type="fanout").exchange.type == "fanout"
    with pytest.raises(UsageError):
        Mailbox("x", queue_durable=True, queue_exclusive=True)
