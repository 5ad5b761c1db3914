"""On amqp://, queues and bindings come from RabbitMQ's management API (here a stand-in speaking its JSON)."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kelp.cli import main

from .web_kit import Served

# What RabbitMQ's management API answers (trimmed to the fields kelp reads, plus some it ignores).
QUEUES = [
    {
        "name": "b-queue",
        "vhost": "/",
        "messages_ready": 7,
        "messages_unacknowledged": 2,
        "consumers": 1,
        "message_stats": {
            "publish": 120,
            "publish_details": {"rate": 4.2},
            "deliver_get": 100,
            "deliver_get_details": {"rate": 3.0},
            "ack": 90,
            "ack_details": {"rate": 2.5},
            "redeliver": 1,
            "redeliver_details": {"rate": 0.0},
        },
    },
    # no traffic yet: RabbitMQ leaves message_stats out
    {"name": "a-queue", "vhost": "/", "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0},
    # rates_mode = none: counts without rates
    {"name": "c-queue", "messages_ready": 0, "messages_unacknowledged": 0, "message_stats": {"publish": 5}},
]
BINDINGS = [
    {
        "source": "",
        "destination": "a-queue",
        "destination_type": "queue",
        "routing_key": "a-queue",
        "arguments": {},
    },
    {
        "source": "logs",
        "destination": "b-queue",
        "destination_type": "queue",
        "routing_key": "#",
        "arguments": {},
    },
]


class _Management(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        expected = "Basic " + base64.b64encode(b"guest:guest").decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.end_headers()
            return
        body = {"/api/queues/%2F": QUEUES, "/api/bindings/%2F": BINDINGS}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def management() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Management)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_web_view_reads_the_management_api(management: str) -> None:
    served = Served("amqp://guest:guest@127.0.0.1:1/", management_url=management)
    try:
        queues = served.api("/api/queues")["queues"]
        assert queues == [
            {"name": "a-queue", "ready": 0, "unacked": 0, "consumers": 0, "delayed": None}
            | {"published": 0, "delivered": 0, "acked": 0}
            | {"publish_rate": 0.0, "deliver_rate": 0.0, "ack_rate": 0.0},
            {"name": "b-queue", "ready": 7, "unacked": 2, "consumers": 1, "delayed": None}
            | {"published": 120, "delivered": 100, "acked": 90}
            | {"publish_rate": 4.2, "deliver_rate": 3.0, "ack_rate": 2.5},  # RabbitMQ's own rates
            {"name": "c-queue", "ready": 0, "unacked": 0, "consumers": 0, "delayed": None}
            | {"published": 5, "delivered": 0, "acked": 0}
            | {"publish_rate": None, "deliver_rate": None, "ack_rate": None},
        ]
        assert [b["source"] for b in served.api("/api/bindings")["bindings"]] == ["", "logs"]
        status, _, page = served.get("/")
        assert status == 200
        assert "<td class='n ready'>7</td>" in page
        assert "<td class='n delayed'>-</td>" in page  # RabbitMQ cannot count them
        assert "<td class='n publish_rate'>4.2</td>" in page
        status, _, text = served.get("/metrics")
        assert 'kelp_queue_messages_unacked{queue="b-queue"} 2' in text.splitlines()
        assert "kelp_queue_messages_delayed" not in text
        assert 'kelp_queue_messages_acked_total{queue="b-queue"} 90' in text.splitlines()
    finally:
        served.close()


def test_cli_lists_amqp_queues_and_bindings(
    management: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if "amqp" not in os.environ.get("KELP_TEST_TRANSPORTS", "memory").split(","):
        pytest.skip("KELP_TEST_TRANSPORTS does not name amqp")
    url = os.environ["KELP_TEST_AMQP_URL"]
    monkeypatch.setenv("KELP_MANAGEMENT_URL", management)
    assert main(["--url", url, "queues"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "delayed"
    assert lines[1].split() == ["a-queue", "0", "0", "0", "-"]  # RabbitMQ cannot count delayed messages
    assert lines[2].split() == ["b-queue", "7", "2", "1", "-"]
    assert lines[3].split() == ["c-queue", "0", "0", "0", "-"]
    assert main(["--url", url, "bindings"]) == 0
    assert "logs" in capsys.readouterr().out
    monkeypatch.setenv("KELP_MANAGEMENT_URL", "http://127.0.0.1:1")
    assert main(["--url", url, "queues"]) == 1
    assert "enable the rabbitmq_management plugin" in capsys.readouterr().err
