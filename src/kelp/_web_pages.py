"""The HTML and text pages of ``kelp serve`` (see :mod:`kelp.web`): rendered on the server, every value
escaped; the front page carries the few lines of JavaScript that keep its counts current."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["page", "render_index", "render_metrics", "render_queue"]

_e = html.escape

_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#eee}
pre{background:#f6f6f6;padding:6px;max-width:60em;overflow:auto}.note{color:#666}"""

_POLL = """<script>
const COLUMNS = ['ready', 'unacked', 'consumers', 'delayed', 'publish_rate', 'deliver_rate', 'ack_rate'];
async function poll() {
  try {
    const data = await (await fetch('/api/queues')).json();
    for (const q of data.queues) {
      const row = document.querySelector(`tr[data-queue="${CSS.escape(q.name)}"]`);
      if (!row) { location.reload(); return; }
      for (const key of COLUMNS) row.querySelector(`.${key}`).textContent = q[key] ?? '-';
    }
    document.getElementById('updated').textContent = new Date().toLocaleTimeString();
  } catch (e) { document.getElementById('updated').textContent = 'not updating: ' + e; }
}
setInterval(poll, 1000); poll();
</script>"""

#: The rate columns: key in /api/queues, heading.
RATES = (("publish_rate", "publish/s"), ("deliver_rate", "deliver/s"), ("ack_rate", "ack/s"))


def page(title: str, body: str, script: str = "") -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}{script}</body></html>"
    )


def render_index(
    where: str,
    queues: Sequence[dict[str, Any]] | None,
    bindings: Sequence[dict[str, Any]],
    allow_write: bool,
    note: str = "",
) -> str:
    """The front page: queues (None: unknown, ``note`` says why), exchanges, bindings."""
    parts = [f"<h1>kelp: {_e(where)}</h1>"]
    if queues is None:
        parts.append(f"<p class='note' id='management'>{_e(note)}</p>")
        return page("kelp", "".join(parts))
    rows = "".join(
        f"<tr data-queue='{_e(q['name'])}'><td><a href='/queues/{_e(quote(q['name'], safe=''))}'>"
        f"{_e(q['name'])}</a></td><td class='n ready'>{q['ready']}</td>"
        f"<td class='n unacked'>{q['unacked']}</td>"
        f"<td class='n consumers'>{q['consumers']}</td>"
        f"<td class='n delayed'>{_shown(q.get('delayed'))}</td>"
        + "".join(f"<td class='n {key}'>{_shown(q.get(key))}</td>" for key, _ in RATES)
        + "</tr>"
        for q in queues
    )
    parts.append(
        "<h2>Queues</h2><table id='queues'><tr><th>queue</th><th>ready</th><th>unacked</th>"
        "<th>consumers</th><th>delayed</th>"
        + "".join(f"<th>{heading}</th>" for _, heading in RATES)
        + f"</tr>{rows}</table>"
        "<p class='note'>updated <span id='updated'>when rendered</span>; publish/s counts messages "
        "entering the queue, deliver/s deliveries and gets, ack/s acks, per second over the last few "
        "seconds (- until known). Open a queue to browse its messages and dead letters.</p>"
    )
    exchanges = sorted({b["source"] for b in bindings if b["source"]})
    parts.append("<h2>Exchanges</h2><p>" + (", ".join(_e(x) for x in exchanges) or "none bound") + "</p>")
    rows = "".join(
        f"<tr><td>{_e(b['source'] or '(default)')}</td><td>{_e(b['kind'])}</td>"
        f"<td>{_e(b['destination'])}</td><td>{_e(b['routing_key'])}</td>"
        f"<td>{_e(json.dumps(b['arguments']) if b['arguments'] else '')}</td></tr>"
        for b in bindings
    )
    parts.append(
        "<h2>Bindings</h2><table id='bindings'><tr><th>source</th><th>kind</th><th>destination</th>"
        f"<th>routing key</th><th>arguments</th></tr>{rows}</table>"
    )
    mode = "read-write (token required)" if allow_write else "read-only"
    parts.append(
        f"<p class='note'>{mode} · <a href='/metrics'>/metrics</a> · <a href='/api/queues'>/api/</a></p>"
    )
    return page("kelp", "".join(parts), _POLL)


def _shown(value: Any) -> str:
    return "-" if value is None else _e(str(value))


def render_queue(name: str, messages: Sequence[dict[str, Any]], allow_write: bool) -> str:
    dead = sum(1 for m in messages if m["dead_letter_from"])
    parts = [
        f"<p><a href='/'>← queues</a></p><h1>queue {_e(name)}</h1>",
        f"<p id='summary'>{len(messages)} message(s) shown from the head of the queue (left in it); "
        f"{dead} dead letter(s).</p>",
    ]
    target = "/queues/" + _e(quote(name, safe=""))
    if allow_write:
        for action, text in (
            ("requeue", "requeue dead letters to origin"),
            ("purge", "purge ready messages"),
        ):
            parts.append(
                f"<form method='post' action='{target}/{action}' id='{action}'>"
                f"<input type='password' name='token' placeholder='token' required> "
                f"<button type='submit'>{text}</button></form>"
            )
    else:
        parts.append("<p class='note'>read-only: start with --allow-write --token T to requeue or purge</p>")
    for m in messages:
        origin = m["dead_letter_from"]
        where = (
            f"dead letter from queue {_e(origin['queue'])} ({_e(origin['reason'])}; exchange "
            f"{_e(origin['exchange'] or '(default)')}, key {_e(origin['routing_key'])})"
            if origin
            else ""
        )
        parts.append(
            f"<div class='message'><h3>#{m['delivery_tag']} · {_e(str(m['content_type']))} · "
            f"{m['size']} bytes · {m['body_kind']} {where}</h3><pre class='body'>{_e(m['body'])}</pre>"
            f"<details><summary>headers and properties</summary><pre>"
            f"{_e(json.dumps({'headers': m['headers'], 'properties': m['properties']}, indent=2))}"
            "</pre></details></div>"
        )
    return page(f"kelp: {name}", "".join(parts))


def render_metrics(queues: Sequence[dict[str, Any]]) -> str:
    lines = []
    for key, metric, text in (
        ("ready", "kelp_queue_messages_ready", "Messages ready in the queue"),
        ("unacked", "kelp_queue_messages_unacked", "Messages delivered and not yet settled"),
        ("consumers", "kelp_queue_consumers", "Consumers of the queue"),
        ("delayed", "kelp_queue_messages_delayed", "Messages held until their due time"),
    ):
        known = [q for q in queues if q.get(key) is not None]
        if key == "delayed" and not known:  # a broker that cannot count them (RabbitMQ)
            continue
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
        lines += [f'{metric}{{queue="{_label(q["name"])}"}} {q[key]}' for q in known]
    for key, metric, text in (
        ("published", "kelp_queue_messages_published_total", "Messages that entered the queue"),
        ("delivered", "kelp_queue_messages_delivered_total", "Deliveries and gets, redeliveries included"),
        ("acked", "kelp_queue_messages_acked_total", "Deliveries acknowledged"),
    ):
        known = [q for q in queues if q.get(key) is not None]
        if known:  # a transport that cannot count them leaves them out
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
            lines += [f'{metric}{{queue="{_label(q["name"])}"}} {q[key]}' for q in known]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
