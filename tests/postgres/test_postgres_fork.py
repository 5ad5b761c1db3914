"""A process forked after it connected (Celery's prefork pool, multiprocessing's fork): the child gets
sessions of its own, and nothing it does - opening connections, collecting the inherited ones - touches
the parent's sessions on the server."""

from __future__ import annotations

import gc
import os
import sys

import pytest

import kelp

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _child(url: str, queue: str) -> int:
    """Runs in the forked child; its exit status says what went wrong (0: nothing)."""
    try:
        with kelp.Connection(url) as conn:
            producer = conn.Producer()
            for i in range(20):
                producer.publish({"from": "child", "i": i}, routing_key=queue)
            got = conn.SimpleQueue(queue).get(timeout=5)
            got.ack()
        gc.collect()  # the parent's connection objects are collected here too
        return 0
    except BaseException as exc:  # report anything: the child must not run the parent's pytest
        print(f"child failed: {exc!r}", file=sys.stderr)
        return 1


def test_a_forked_child_uses_sessions_of_its_own_and_leaves_the_parent_s_alone(pg_url: str) -> None:
    queue = "forked"
    parent = kelp.Connection(pg_url)
    try:
        producer = parent.Producer()
        for i in range(5):
            producer.publish({"from": "parent", "i": i}, routing_key=queue, declare=[kelp.Queue(queue)])
        pid = os.fork()
        if pid == 0:
            os._exit(_child(pg_url, queue))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's sessions still work: it publishes and reads through them.
        producer.publish({"from": "parent", "i": 5}, routing_key=queue)
        simple = parent.SimpleQueue(queue)
        bodies = []
        while len(bodies) < 25:
            message = simple.get(timeout=5)
            bodies.append(message.payload)
            message.ack()
        assert sorted(b["i"] for b in bodies if b["from"] == "parent") == [1, 2, 3, 4, 5]
        assert len([b for b in bodies if b["from"] == "child"]) == 20
    finally:
        parent.close()
