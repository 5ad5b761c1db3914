"""``kelp serve``: a small web view of a broker's queues, bindings and dead letters (stdlib only).

Pages are rendered on the server (the queue table is in the HTML, so the page works without JavaScript and
from curl); a few lines of JavaScript poll ``/api/queues`` to update the counts and rates.
``/metrics`` exports queue gauges and traffic counters for Prometheus; ``/api/`` answers JSON.

Rates: the broker counts, per queue, the messages that entered it, the deliveries and the acks (see
:class:`kelp.transport.base.QueueStats`), so the view sees the traffic of every process. The server keeps
the samples of the last :data:`RATE_WINDOW` seconds (each page or API request takes one) and reports each
rate as the counter's increase over that span, per second: None until two samples exist, or where the
transport cannot count. On ``amqp://`` the rates are RabbitMQ's own (``message_stats``).

What the view does to messages: browsing a queue takes up to ``limit`` messages with ``basic_get`` and
releases them unacked when the page is built, so they stay in the queue, in order, flagged ``redelivered``.
Bodies are shown as JSON, text or raw bytes (base64), decoded here without kelp's serializers, so no
payload is ever unpickled or run. Two write actions exist, refused unless the server was started with
``allow_write`` and the request carries its token: *purge* drops a queue's ready messages, and *requeue*
moves dead letters (messages with an ``x-death`` header) back to the queue they were first dead-lettered
from (through the default exchange, so no other queue gets a copy), publishing each one before acking the
dead letter (at-least-once).

On ``memory://`` the view sees the broker of its own process: serve it from the application with
:func:`make_server`. On ``amqp://`` queue counts come from RabbitMQ's management API (plugin
``rabbitmq_management``, port 15672 unless ``management_url`` says otherwise); without it the page says so.
"""

from __future__ import annotations

import hmac
import html
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

# What kelp.web offered before the inspector had a module of its own stays importable from here.
from kelp._web_inspector import BROWSE_LIMIT, Inspector, ManagementUnavailable
from kelp._web_inspector import COUNTERS as COUNTERS
from kelp._web_inspector import RATE_WINDOW as RATE_WINDOW
from kelp._web_inspector import Rates as Rates
from kelp._web_inspector import dead_letter_origin as dead_letter_origin
from kelp._web_inspector import describe as describe
from kelp._web_pages import page, render_index, render_metrics, render_queue
from kelp.exceptions import KelpError, UsageError

__all__ = ["Inspector", "make_server", "serve"]


# --- HTTP -----------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "kelp-serve"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the command prints its own line
        return

    # routing
    def do_GET(self) -> None:
        path, query = self._split()
        inspector = self.server.inspector
        try:
            if path == "/":
                self._send_html(_index(inspector, self.server.allow_write))
            elif path.startswith("/queues/"):
                name = unquote(path[len("/queues/") :])
                limit = _int(query.get("limit"), BROWSE_LIMIT)
                self._send_html(render_queue(name, inspector.browse(name, limit), self.server.allow_write))
            elif path == "/api/queues":
                self._send_json({"queues": inspector.queues(), "time": time.time()})
            elif path == "/api/bindings":
                self._send_json({"bindings": inspector.bindings()})
            elif path.startswith("/api/queues/") and path.endswith("/messages"):
                name = unquote(path[len("/api/queues/") : -len("/messages")])
                limit = _int(query.get("limit"), BROWSE_LIMIT)
                self._send_json({"queue": name, "messages": inspector.browse(name, limit)})
            elif path == "/metrics":
                body = render_metrics(inspector.queues()).encode()
                self._send(HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", body)
            else:
                self._send_json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)
        except ManagementUnavailable as exc:
            self._send_error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except KelpError as exc:
            self._send_error(HTTPStatus.BAD_REQUEST, str(exc))

    def do_POST(self) -> None:
        path, _ = self._split()
        length = _int(self.headers.get("Content-Length"), 0)
        form = parse_qs(self.rfile.read(min(length, 65536)).decode("utf-8", "replace"))
        # /api/queues/... answers JSON; /queues/... is the page's form, answered by a redirect to the page.
        from_form = not path.startswith("/api/queues/")
        prefix = "/queues/" if from_form else "/api/queues/"
        name, _, action = path[len(prefix) :].rpartition("/")
        if not path.startswith(prefix) or action not in ("purge", "requeue") or not name:
            self._send_json({"error": f"no such action: {path}"}, HTTPStatus.NOT_FOUND)
            return
        refusal = self._refusal(form)
        if refusal is not None:
            self._send_error(HTTPStatus.FORBIDDEN, refusal)
            return
        name = unquote(name)
        inspector = self.server.inspector
        try:
            if action == "purge":
                result = {"queue": name, "purged": inspector.purge(name)}
            else:
                result = {"queue": name, "requeued": inspector.requeue_dead_letters(name)}
        except KelpError as exc:
            self._send_error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if from_form:
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/queues/" + quote(name, safe=""))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send_json(result)

    def _refusal(self, form: dict[str, list[str]]) -> str | None:
        if not self.server.allow_write:
            return "read-only: start kelp serve with --allow-write --token TOKEN to purge or requeue"
        auth = self.headers.get("Authorization") or ""
        given = auth[len("Bearer ") :] if auth.startswith("Bearer ") else (form.get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            return "wrong or missing token"
        return None

    # responses
    def _split(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_html(self, page: str) -> None:
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode())

    def _send_json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, "application/json", json.dumps(data).encode())

    def _send_error(self, status: HTTPStatus, text: str) -> None:
        if (self.headers.get("Accept") or "").startswith("text/html"):
            self._send(
                status,
                "text/html; charset=utf-8",
                page("kelp: error", f"<p>{html.escape(text)}</p>").encode(),
            )
        else:
            self._send_json({"error": text}, status)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], inspector: Inspector, allow_write: bool, token: str | None
    ) -> None:
        super().__init__(address, _Handler)
        self.inspector = inspector
        self.allow_write = allow_write
        self.token = token or ""


def make_server(
    url: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_write: bool = False,
    token: str | None = None,
    management_url: str | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for the broker at ``url`` (not yet serving: call ``serve_forever``; port 0 picks one).

    ``allow_write`` enables purge and requeue, and requires ``token``, which each such request must carry
    (``Authorization: Bearer TOKEN``, or a ``token`` form field)."""
    if allow_write and not token:
        raise UsageError("allow_write needs a token, which write requests must carry")
    return _Server((host, port), Inspector(url, management_url), allow_write, token)


def serve(url: str, host: str = "127.0.0.1", port: int = 8765, **options: Any) -> None:
    """Serve the web view until interrupted."""
    server = make_server(url, host, port, **options)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.inspector.close()  # type: ignore[attr-defined]


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, min(int(text), 1000)) if text is not None else default
    except ValueError:
        return default


def _index(inspector: Inspector, allow_write: bool) -> str:
    where = inspector._connection.as_uri()  # password masked
    try:
        queues = inspector.queues()
    except ManagementUnavailable as exc:
        return render_index(where, None, [], allow_write, str(exc))
    return render_index(where, queues, inspector.bindings(), allow_write)
