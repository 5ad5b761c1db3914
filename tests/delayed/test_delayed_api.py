"""The delayed-delivery API itself, on any transport: validation of countdown and eta, the due time and
message id an envelope carries, and a clear refusal from a transport that cannot hold messages."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest

import kelp
from kelp.aio.messaging import due_time
from kelp.exceptions import UsageError
from kelp.transport.memory import MemoryTransport


@pytest.fixture
def conn():
    with kelp.Connection(f"memory://{uuid.uuid4().hex}") as connection:
        yield connection


@pytest.mark.parametrize("countdown", [-1, -0.001, "5", b"5", True, float("nan"), float("inf"), [1]])
def test_a_bad_countdown_is_refused(conn, countdown):
    queue = kelp.Queue("q")(conn.default_channel)
    queue.declare()
    with pytest.raises(UsageError, match="countdown"):
        conn.Producer().publish("x", routing_key="q", countdown=countdown)
    assert queue.get() is None  # nothing was published


def test_a_naive_eta_is_refused(conn):
    with pytest.raises(UsageError, match="aware"):
        conn.Producer().prepare("x", eta=datetime.datetime.now() + datetime.timedelta(seconds=5))


def test_an_eta_that_is_not_a_datetime_is_refused(conn):
    with pytest.raises(UsageError, match="datetime"):
        conn.Producer().prepare("x", eta=time.time() + 5)  # type: ignore[arg-type]


def test_countdown_and_eta_together_are_refused(conn):
    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
    with pytest.raises(UsageError, match="not both"):
        conn.Producer().publish("x", routing_key="q", countdown=5, eta=eta)


def test_the_envelope_carries_an_absolute_due_time_and_an_id():
    with kelp.Connection("memory://") as connection:
        before = time.time()
        envelope = connection.Producer().prepare("x", countdown=2.5)
        after = time.time()
    assert before + 2.5 <= envelope.due <= after + 2.5
    assert envelope.properties["message_id"]


def test_a_given_message_id_is_the_one_that_cancels():
    with kelp.Connection("memory://") as connection:
        envelope = connection.Producer().prepare("x", countdown=1, message_id="mine")
    assert envelope.properties["message_id"] == "mine"


def test_eta_in_another_timezone_is_the_same_instant():
    tz = datetime.timezone(datetime.timedelta(hours=-7))
    eta = datetime.datetime.now(tz) + datetime.timedelta(seconds=30)
    assert due_time(None, eta) == pytest.approx(time.time() + 30, abs=0.5)


def test_a_past_due_time_means_now():
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    assert due_time(None, past) is None
    assert due_time(0, None) is None
    assert due_time(None, None) is None


def test_an_immediate_publish_returns_no_generated_id(conn):
    kelp.Queue("q")(conn.default_channel).declare()
    assert conn.Producer().publish("x", routing_key="q") is None
    assert conn.Producer().publish("x", routing_key="q", message_id="given") == "given"


def test_a_transport_that_cannot_delay_refuses_rather_than_deliver_early(conn, monkeypatch):
    monkeypatch.setattr(
        MemoryTransport, "implements", MemoryTransport.implements.extend(delayed_delivery=False)
    )
    queue = kelp.Queue("q")(conn.default_channel)
    queue.declare()
    with pytest.raises(UsageError, match="cannot hold delayed messages"):
        conn.Producer().publish("x", routing_key="q", countdown=0.05)
    time.sleep(0.1)
    assert queue.get() is None


def test_cancel_needs_an_id(conn):
    with pytest.raises(UsageError, match="message id"):
        conn.Producer().cancel_delayed("")
