"""A Kombu mailbox and a kelp mailbox on one RabbitMQ speak the same wire format: a Kombu client gets
replies from kelp nodes and a kelp client from Kombu nodes (needs KELP_TEST_AMQP_URL)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu
import kombu.pidbox
import pytest

import kelp
import kelp.pidbox

AMQP_URL = os.environ.get("KELP_TEST_AMQP_URL")
pytestmark = pytest.mark.skipif(not AMQP_URL, reason="KELP_TEST_AMQP_URL is not set: no RabbitMQ to talk to")


def _kombu_url() -> str:
    assert AMQP_URL is not None
    return "py" + AMQP_URL if AMQP_URL.startswith("amqp://") else AMQP_URL


def _serve(library: Any, mailbox_cls: Any, url: str, namespace: str, hostname: str) -> Callable[[], None]:
    """Run a node of ``library`` in a thread until the returned function is called."""
    ready, stop = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with library.Connection(url) as conn:
                node = mailbox_cls(namespace)(conn).Node(hostname, state={"library": library.__name__})
                node.handlers["ping"] = lambda state, value=0: {"pong": value, **state}
                node.listen(channel=conn.default_channel)
                ready.set()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        pass
        except BaseException as exc:  # reported by the stopper
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stopper() -> None:
        stop.set()
        thread.join(10)
        assert not failures, failures

    return stopper


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """A Kombu node ``kombu-node`` and a kelp node ``kelp-node`` of one fresh namespace."""
    namespace = f"interop-{uuid.uuid4().hex[:8]}"
    assert AMQP_URL is not None
    stop_kombu = _serve(kombu, kombu.pidbox.Mailbox, _kombu_url(), namespace, "kombu-node")
    try:
        stop_kelp = _serve(kelp, kelp.pidbox.Mailbox, AMQP_URL, namespace, "kelp-node")
        try:
            yield namespace
        finally:
            stop_kelp()
    finally:
        stop_kombu()


def _merged(replies: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    return merged


def test_a_kelp_client_talks_to_kombu_and_kelp_nodes(two_nodes: str) -> None:
    assert AMQP_URL is not None
    with kelp.Connection(AMQP_URL) as conn:
        mailbox = kelp.pidbox.Mailbox(two_nodes)(conn)
        assert _merged(mailbox.multi_call("ping", {"value": 1}, timeout=1)) == {
            "kombu-node": {"pong": 1, "library": "kombu"},
            "kelp-node": {"pong": 1, "library": "kelp"},
        }
        assert mailbox.call(["kombu-node"], "ping", {"value": 2}, timeout=2) == [
            {"kombu-node": {"pong": 2, "library": "kombu"}}
        ]


def test_a_kombu_client_talks_to_kombu_and_kelp_nodes(two_nodes: str) -> None:
    with kombu.Connection(_kombu_url()) as conn:
        mailbox = kombu.pidbox.Mailbox(two_nodes)(conn)
        assert _merged(mailbox.multi_call("ping", {"value": 3}, timeout=1)) == {
            "kombu-node": {"pong": 3, "library": "kombu"},
            "kelp-node": {"pong": 3, "library": "kelp"},
        }
        assert mailbox.call(["kelp-node"], "ping", {"value": 4}, timeout=2) == [
            {"kelp-node": {"pong": 4, "library": "kelp"}}
        ]
        assert _merged(mailbox.call(["kelp-node"], "nope", timeout=2)) == {
            "kelp-node": {"error": "KeyError('nope')"}
        }
