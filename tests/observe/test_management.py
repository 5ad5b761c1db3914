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
    {"name": "b-queue", "vhost": "/", "messages_ready": 7, "messages_unacknowledged": 2, "consumers": 1},
    {"name": "a-queue", "vhost": "/", "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0},
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
        assert served.api("/api/queues")["queues"] == [
            {"name": "a-queue", "ready": 0, "unacked": 0, "consumers": 0, "delayed": None},
            {"name": "b-queue", "ready": 7, "unacked": 2, "consumers": 1, "delayed": None},
        ]
        assert [b["source"] for b in served.api("/api/bindings")["bindings"]] == ["", "logs"]
        status, _, page = served.get("/")
        assert status == 200
        assert "<td class='n ready'>7</td>" in page
        assert "<td class='n delayed'>-</td>" in page  # RabbitMQ cannot count them
        status, _, text = served.get("/metrics")
        assert 'kelp_queue_messages_unacked{queue="b-queue"} 2' in text.splitlines()
        assert "kelp_queue_messages_delayed" not in text
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
    assert main(["--url", url, "bindings"]) == 0
    assert "logs" in capsys.readouterr().out
    monkeypatch.setenv("KELP_MANAGEMENT_URL", "http://127.0.0.1:1")
    assert main(["--url", url, "queues"]) == 1
    assert "enable the rabbitmq_management plugin" in capsys.readouterr().err
