"""Delayed messages on RabbitMQ: kelp's TTL tiers (the node here has no delayed-message plugin, so they
are what runs) are durable and hold persistent messages, deliver to quorum queues, keep the routing key
and priority, and the plugin path runs when the node has the plugin."""

from __future__ import annotations

import time

import pytest

import kelp
from kelp.transport._amqp_delay import LEVELS, STEP_MS, bit_header, tier_name, tier_route


def _take(bound, n, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        message = bound.get()
        if message is None:
            time.sleep(0.02)
            continue
        message.ack()
        got.append((message, time.time()))
    return got


def test_tier_route_writes_the_delay_in_binary_steps():
    assert tier_route(1) == (tier_name(0), {bit_header(0): "1"})
    exchange, bits = tier_route(5 * STEP_MS)  # 101
    assert exchange == tier_name(2)
    assert bits == {bit_header(0): "1", bit_header(1): "0", bit_header(2): "1"}
    # Rounded up, never down: a partial step is a whole one.
    assert tier_route(STEP_MS + 1)[1] == {bit_header(0): "0", bit_header(1): "1"}
    with pytest.raises(kelp.exceptions.UsageError, match="cannot delay"):
        tier_route(2**LEVELS * STEP_MS)


def test_delayed_message_reaches_a_quorum_queue_with_its_key_and_properties(amqp_url, names):
    exchange = kelp.Exchange(names("topic"), "topic", durable=True)
    queue = kelp.Queue(
        names("qq"), exchange, routing_key="jobs.#", durable=True, queue_arguments={"x-queue-type": "quorum"}
    )
    with kelp.Connection(amqp_url) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        producer = conn.Producer(exchange=exchange)
        due = time.time() + 1.0
        producer.publish(
            {"n": 1}, routing_key="jobs.email", countdown=1.0, headers={"mine": "yes"}, priority=3
        )
        producer.publish({"n": 2}, routing_key="other.key", countdown=1.0)  # routed nowhere when due
        assert bound.get() is None
        assert conn.transport.delays.plugin is False  # this node has no plugin: the tiers held it
        got = _take(bound, 1, timeout=5)
        assert len(got) == 1
        message, at = got[0]
        assert at >= due
        assert message.payload == {"n": 1}
        assert message.delivery_info["routing_key"] == "jobs.email"
        assert message.headers["mine"] == "yes"
        assert message.properties["priority"] == 3
        time.sleep(0.3)
        assert bound.get() is None


def test_tier_queues_are_durable_and_hold_persistent_messages(amqp_url, names):
    name = names("q")
    with kelp.Connection(amqp_url) as conn:
        bound = kelp.Queue(name, durable=True)(conn.default_channel)
        bound.declare()
        conn.Producer().publish("held", routing_key=name, countdown=24 * STEP_MS / 1000)  # 24 = 0b11000
        # RabbitMQ refuses a durable redeclare of a transient queue (PRECONDITION_FAILED), so this
        # succeeding says the tier survives a node restart, with the persistent message it now holds.
        info = kelp.Queue(
            tier_name(4),
            durable=True,
            queue_arguments={"x-message-ttl": STEP_MS << 4, "x-dead-letter-exchange": tier_name(3)},
        )(conn.channel()).queue_declare()
        assert info.message_count >= 1
        got = _take(bound, 1, timeout=10)
        assert [m.payload for m, _ in got] == ["held"]
        assert got[0][0].properties["delivery_mode"] == 2


def test_plugin_path_when_the_node_has_the_plugin(amqp_url, names):
    with kelp.Connection(amqp_url) as conn:
        name = names("q")
        bound = kelp.Queue(name)(conn.default_channel)
        bound.declare()
        conn.Producer().publish("x", routing_key=name, countdown=0.5)
        if not conn.transport.delays.plugin:
            pytest.skip("this RabbitMQ has no rabbitmq_delayed_message_exchange: the TTL tiers were tested")
        assert bound.get() is None
        assert [m.payload for m, _ in _take(bound, 1, timeout=5)] == ["x"]
