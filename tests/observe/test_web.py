"""kelp serve over HTTP: pages, JSON API, /metrics, safe browsing, requeue and purge with a token."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import kelp
from kelp import web
from kelp.cli import main

from .web_kit import ORDERS, TOKEN, Served, fill


def _transports() -> list[str]:
    chosen = os.environ.get("KELP_TEST_TRANSPORTS", "memory,sqlite").split(",")
    return ["sqlite", *(["redis"] if "redis" in chosen else [])]


@pytest.fixture(params=_transports())
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return fill(f"sqlite:///{tmp_path}/web.db")
    redis_url = os.environ.get("KELP_TEST_REDIS_URL")
    assert redis_url, "KELP_TEST_TRANSPORTS names redis but KELP_TEST_REDIS_URL is not set"
    return fill(f"{redis_url}?prefix=web-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def served(url: str) -> Iterator[Served]:
    served = Served(url)
    yield served
    served.close()


def test_index_is_server_rendered(served: Served) -> None:
    status, kind, page = served.get("/")
    assert status == 200
    assert kind.startswith("text/html")
    # The queue table is in the HTML itself (no JavaScript needed).
    assert "<tr data-queue='jobs'>" in page
    assert "<td class='n ready'>3</td>" in page
    assert "<tr data-queue='jobs.dead'>" in page
    assert "dlx" in page
    assert "fetch('/api/queues')" in page


def test_api_and_metrics_follow_traffic(served: Served, url: str) -> None:
    queues = {q["name"]: q for q in served.api("/api/queues")["queues"]}
    counts = {k: v for k, v in queues["jobs"].items() if not k.endswith("_rate")}
    # fill() published 4 messages to jobs and took 7 deliveries from it (4 of them requeued), acking none.
    assert counts == {
        "name": "jobs",
        "ready": 3,
        "unacked": 0,
        "consumers": 0,
        "delayed": 0,
        "published": 4,
        "delivered": 7,
        "acked": 0,
    }
    assert queues["jobs"]["publish_rate"] is None  # one sample: no rate yet
    assert queues["jobs.dead"]["ready"] == 1
    bindings = served.api("/api/bindings")["bindings"]
    assert {
        "source": "orders",
        "kind": "queue",
        "destination": "jobs",
        "routing_key": "new",
        "arguments": {},
    } in [{**b, "arguments": b["arguments"] or {}} for b in bindings]
    with kelp.Connection(url) as connection:
        connection.Producer(exchange=ORDERS).publish("more", routing_key="new")
        held = connection.default_channel.basic_get("jobs")
        assert held is not None
        queues = {q["name"]: q for q in served.api("/api/queues")["queues"]}
        assert (queues["jobs"]["ready"], queues["jobs"]["unacked"]) == (3, 1)
        status, kind, text = served.get("/metrics")
        assert status == 200
        assert kind.startswith("text/plain")
        assert 'kelp_queue_messages_ready{queue="jobs"} 3' in text.splitlines()
        assert 'kelp_queue_messages_unacked{queue="jobs"} 1' in text.splitlines()


def _metric(text: str, name: str, queue: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("queue") == queue:
                return float(sample.value)
    raise AssertionError(f"no {name} for {queue} in /metrics")


def test_rates_while_messages_flow(served: Served, url: str) -> None:
    stop = threading.Event()

    def traffic() -> None:
        # Another connection (on sqlite and redis it could be another process): publish, take, ack.
        with kelp.Connection(url) as connection:
            producer = connection.Producer(exchange=ORDERS)
            while not stop.is_set():
                for n in range(5):
                    producer.publish({"n": n}, routing_key="new")
                for _ in range(5):
                    message = connection.default_channel.basic_get("jobs")
                    if message is not None:
                        message.ack()
                time.sleep(0.05)

    first = served.api("/api/queues")["queues"]
    assert {q["name"]: q["publish_rate"] for q in first} == {"jobs": None, "jobs.dead": None}
    scraped = served.get("/metrics")[2]
    published = _metric(scraped, "kelp_queue_messages_published_total", "jobs")
    acked = _metric(scraped, "kelp_queue_messages_acked_total", "jobs")
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            time.sleep(0.3)
            jobs = {q["name"]: q for q in served.api("/api/queues")["queues"]}["jobs"]
            if all(jobs[key] for key in ("publish_rate", "deliver_rate", "ack_rate")):
                break
            assert time.monotonic() < deadline, jobs
        assert min(jobs["publish_rate"], jobs["deliver_rate"], jobs["ack_rate"]) > 0
        # The page renders the rates itself (no JavaScript needed).
        page = served.get("/")[2]
        cell = page.split("<tr data-queue='jobs'>", 1)[1].split("</tr>", 1)[0]
        rate = float(cell.split("<td class='n publish_rate'>", 1)[1].split("<", 1)[0])
        assert rate > 0
        scraped = served.get("/metrics")[2]
        assert _metric(scraped, "kelp_queue_messages_published_total", "jobs") > published
        assert _metric(scraped, "kelp_queue_messages_acked_total", "jobs") > acked
        assert "# TYPE kelp_queue_messages_published_total counter" in scraped
    finally:
        stop.set()
        worker.join(10)


def test_rates_over_the_window() -> None:
    rates = web.Rates(window=5.0)

    def sample(at: float, published: int | None, delivered: int = 0) -> dict[str, Any]:
        queue = {"name": "q", "published": published, "delivered": delivered, "acked": 0}
        rates.add(at, [queue])
        return queue

    assert sample(100.0, 10)["publish_rate"] is None  # one sample: nothing to compare with
    assert sample(101.0, 20, 4)["publish_rate"] == 10.0
    assert sample(102.0, 40, 8)["deliver_rate"] == 4.0  # over the 2 s since the first sample
    for at in range(103, 110):
        last = sample(float(at), 40, 8)
    assert last["publish_rate"] == 0.0  # the burst left the 5 s window
    assert sample(110.0, 3)["publish_rate"] is None  # counters went back: the queue was declared again
    assert sample(111.0, None)["publish_rate"] is None  # a transport that cannot count


def test_browse_decodes_safely_and_leaves_messages(served: Served) -> None:
    messages = served.api("/api/queues/jobs/messages")["messages"]
    assert [m["body_kind"] for m in messages] == ["json", "text", "raw"]
    assert json.loads(messages[0]["body"]) == {"order": 1}
    assert messages[1]["body"] == "plain text"
    assert messages[2]["content_type"] == "application/x-python-serialize"
    # still all there after browsing
    assert {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}["jobs"] == 3
    status, _, page = served.get("/queues/jobs.dead")
    assert status == 200
    assert "dead letter from queue jobs (rejected; exchange orders, key new)" in page
    assert "1 dead letter(s)" in page


def test_write_actions_are_refused_when_read_only(served: Served) -> None:
    status, body = served.post("/api/queues/jobs/purge", TOKEN)
    assert status == 403
    assert "read-only" in body["error"]
    assert {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}["jobs"] == 3


def test_requeue_and_purge_need_the_token(url: str) -> None:
    served = Served(url, allow_write=True, token=TOKEN)
    try:
        for token in (None, "wrong"):
            status, body = served.post("/api/queues/jobs.dead/requeue", token)
            assert status == 403
            assert body["error"] == "wrong or missing token"
        # A sibling bound like jobs must not get a copy: the dead letter goes back to its queue only.
        with kelp.Connection(url) as connection:
            connection.default_channel.declare_queue(kelp.Queue("sibling", ORDERS, "new"))
        assert served.post("/api/queues/jobs.dead/requeue", TOKEN) == (
            200,
            {"queue": "jobs.dead", "requeued": 1},
        )
        queues = {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}
        assert queues == {"jobs": 4, "jobs.dead": 0, "sibling": 0}
        # the HTML form posts the token as a field and is redirected back to the queue page
        status, page = served.post("/queues/jobs/purge", TOKEN, form=True)
        assert status == 200
        assert "0 message(s) shown" in page
        assert {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}["jobs"] == 0
    finally:
        served.close()


def test_allow_write_without_token_is_refused(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", url, "serve", "--allow-write", "--port", "0"]) == 2
    assert "--allow-write needs --token" in capsys.readouterr().err
    with pytest.raises(kelp.exceptions.UsageError):
        web.make_server(url, port=0, allow_write=True)


def test_amqp_without_management_says_so() -> None:
    served = Served("amqp://guest:guest@127.0.0.1:1/", management_url="http://127.0.0.1:1")
    try:
        status, _, page = served.get("/")
        assert status == 200
        assert "enable the rabbitmq_management plugin" in page
        status, _, body = served.get("/api/queues")
        assert status == 503
        assert "management API is not reachable" in json.loads(body)["error"]
    finally:
        served.close()


def test_memory_broker_of_the_same_process() -> None:
    url = "memory://web-view-test"
    with kelp.Connection(url) as connection:
        connection.Producer().publish("hello", routing_key="inbox", declare=[kelp.Queue("inbox")])
        served = Served(url)
        try:
            queues = {q["name"]: q["ready"] for q in served.api("/api/queues")["queues"]}
            assert queues["inbox"] == 1
            assert served.api("/api/queues/inbox/messages")["messages"][0]["body"] == "hello"
        finally:
            served.close()
