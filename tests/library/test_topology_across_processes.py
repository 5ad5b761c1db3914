"""A publish sees the topology other processes declared before it: a queue declared, or a binding made, by
another process once this one had routed on the older topology gets the next publish. A broker that routes
in the publishing process (sqlite, postgres) keeps a snapshot of the topology; one that routed a message
to no queue must not trust that snapshot (the message would be dropped as unroutable). On every transport
named by KELP_TEST_TRANSPORTS that has more than one process (memory is in-process)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import kelp
from transport_urls import selected, url_for

DECLARE = """
import sys, kelp
url, exchange, bound, late = sys.argv[1:]
with kelp.Connection(url) as conn:
    channel = conn.channel()
    kelp.Queue(bound, kelp.Exchange(exchange, "fanout"), durable=True)(channel).declare()
    kelp.Queue(late, durable=True)(channel).declare()
print("declared")
"""


@pytest.fixture(params=selected(("sqlite", "redis", "amqp", "postgres"), fallback="sqlite"))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request.param, tmp_path)


def test_a_queue_and_a_binding_declared_by_another_process_get_the_next_publish(url: str) -> None:
    unique = uuid.uuid4().hex[:8]
    exchange, bound, late = f"fan-{unique}", f"bound-{unique}", f"late-{unique}"
    with kelp.Connection(url) as conn:
        producer = conn.Producer()
        fanout = kelp.Exchange(exchange, "fanout")
        fanout(conn.default_channel).declare()
        # routed on the topology as it is now: to no queue (dropped, as RabbitMQ drops it)
        producer.publish("before", exchange=fanout)
        producer.publish("before", routing_key=late)
        conn.transport.flush(None)
        done = subprocess.run(
            [sys.executable, "-c", DECLARE, url, exchange, bound, late],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip() == "declared", done.stderr
        for mode in ("persistent", "transient"):  # sqlite: a transient publish routes on its own path
            producer.publish(mode, exchange=fanout, delivery_mode=mode)
            producer.publish(mode, routing_key=late, delivery_mode=mode)
        conn.transport.flush(None)
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        try:
            for name in (bound, late):
                queue = kelp.Queue(name, durable=True)(channel)
                got = []
                while (message := queue.get(no_ack=True)) is not None:
                    got.append(message.payload)
                assert got == ["persistent", "transient"], f"{name} got {got} of what was published after it"
        finally:
            for name in (bound, late):
                kelp.Queue(name)(channel).delete()
            fanout(channel).delete()
