"""Shared by the web view tests: a served broker with a dead-letter queue in it."""

from __future__ import annotations

import json
import pickle
import threading
import urllib.error
import urllib.request
from typing import Any

import kelp
from kelp import web

ORDERS = kelp.Exchange("orders", "direct")
DLX = kelp.Exchange("dlx", "direct")
JOBS = kelp.Queue("jobs", ORDERS, "new", dead_letter_exchange="dlx")
DEAD = kelp.Queue("jobs.dead", DLX, "new")
TOKEN = "s3cret"


class Served:
    def __init__(self, url: str, **options: Any) -> None:
        self.server = web.make_server(url, port=0, **options)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str) -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def api(self, path: str) -> Any:
        status, kind, body = self.get(path)
        assert status == 200, body
        assert kind == "application/json"
        return json.loads(body)

    def post(self, path: str, token: str | None = None, form: bool = False) -> tuple[int, Any]:
        headers = {}
        data = b""
        if token is not None and form:
            data = f"token={token}".encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
                return response.status, json.loads(body) if not form else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.inspector.close()  # type: ignore[attr-defined]
        self.thread.join(5)


def fill(url: str) -> str:
    """Declare the test topology at ``url``: jobs holds 3 messages (json, text, pickle), jobs.dead 1."""
    with kelp.Connection(url) as connection:
        producer = connection.Producer(exchange=ORDERS)
        producer.publish({"order": 1}, routing_key="new", declare=[JOBS, DEAD])
        producer.publish("plain text", routing_key="new")
        # A pickled payload: shown as raw bytes, never unpickled.
        producer.publish(
            pickle.dumps({"x": 1}), routing_key="new", content_type="application/x-python-serialize"
        )
        # Dead-letter one message: it lands in jobs.dead with x-death pointing back to orders/new.
        producer.publish({"order": "dead"}, routing_key="new")
        for _ in range(3):
            message = connection.default_channel.basic_get("jobs")
            assert message is not None
            message.reject(requeue=True)
        seen = []
        while (message := connection.default_channel.basic_get("jobs")) is not None:
            seen.append(message)
        for message in seen:
            if message.body == b'{"order":"dead"}':
                message.reject(requeue=False)
            else:
                message.requeue()
    return url
