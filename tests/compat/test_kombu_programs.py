"""Kombu programs run unchanged on kelp after replacing ``kombu`` with ``kelp`` in their imports.

Each program below is written against Kombu's public API. It runs twice in fresh interpreters, once with
Kombu's memory transport and once with kelp's (the import lines rewritten), and both runs must print the
same lines. Programs avoid the places where kelp deliberately follows RabbitMQ rather than Kombu's virtual
transports (topic ``#`` matching zero words, priority order).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

pytest.importorskip("kombu", reason="Kombu is needed to compare against (test dependency)")

WORK_QUEUE = """
from kombu import Connection, Exchange, Queue, Producer, Consumer

exchange = Exchange("tasks", type="direct")
queue = Queue("work", exchange, routing_key="work")

with Connection(URL) as conn:
    producer = Producer(conn)
    for n in range(5):
        producer.publish({"n": n, "text": "héllo"}, exchange=exchange, routing_key="work",
                         declare=[queue], serializer="json", headers={"attempt": n})
    seen = []

    def handle(body, message):
        seen.append((body["n"], body["text"], message.headers["attempt"], message.content_type))
        message.ack()

    with Consumer(conn, queues=[queue], callbacks=[handle], prefetch_count=2):
        while len(seen) < 5:
            conn.drain_events(timeout=2)
    for row in seen:
        print(row)
"""

SIMPLE_QUEUE = """
from kombu import Connection

with Connection(URL) as conn:
    q = conn.SimpleQueue("simple")
    q.put({"hello": "world"})
    q.put("second")
    print(q.qsize())
    m = q.get(block=True, timeout=2)
    print(m.payload)
    m.ack()
    m = q.get(timeout=2)
    print(m.payload, m.content_type)
    m.ack()
    try:
        q.get(block=False)
    except q.Empty:
        print("empty")
    q.close()
"""

FANOUT_AND_REQUEUE = """
from kombu import Connection, Exchange, Queue, Consumer, Producer

news = Exchange("news", type="fanout")
a, b = Queue("a", news), Queue("b", news)

with Connection(URL) as conn:
    ch = conn.channel()
    for q in (a, b):
        q(ch).declare()
    Producer(ch).publish("extra!", exchange=news)
    print(a(ch).get().payload, b(ch).get(no_ack=True).payload)
    Producer(ch).publish("again", exchange=news)
    m = a(ch).get()
    m.requeue()
    m2 = a(ch).get()
    print(m2.payload, m2.acknowledged)
    m2.ack()
    print(m2.acknowledged)
    try:
        m2.ack()
    except Exception as exc:
        print(type(exc).__name__)
    print(a(ch).queue_declare(passive=True).message_count)
"""

TOPIC = """
from kombu import Connection, Exchange, Queue, Consumer

events = Exchange("events", type="topic")
queues = [Queue("all_errors", events, routing_key="*.error"),
          Queue("billing", events, routing_key="billing.#")]

with Connection(URL) as conn:
    producer = conn.Producer()
    for key in ["billing.error", "auth.error", "billing.invoice.created", "auth.login"]:
        producer.publish({"key": key}, exchange=events, routing_key=key, declare=queues)
    got = {}
    def on_message(body, message):
        got.setdefault(message.delivery_info["routing_key"], []).append(body["key"])
        message.ack()
    with conn.Consumer(queues, callbacks=[on_message]):
        for _ in range(10):
            try:
                conn.drain_events(timeout=0.3)
            except Exception:
                break
    for key in sorted(got):
        print(key, sorted(got[key]))
"""

PROGRAMS = {
    "work_queue": WORK_QUEUE,
    "simple_queue": SIMPLE_QUEUE,
    "fanout_and_requeue": FANOUT_AND_REQUEUE,
    "topic": TOPIC,
}


def _run(program: str, library: str) -> list[str]:
    source = textwrap.dedent(program)
    if library == "kelp":
        source = source.replace("from kombu import", "from kelp import")
    url = f"memory://{uuid.uuid4().hex[:8]}" if library == "kelp" else "memory://"
    source = f"URL = {url!r}\n" + source
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{library} failed:\n{result.stderr}"
    return result.stdout.splitlines()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_kombu_program_runs_the_same_on_kelp(name: str) -> None:
    expected = _run(PROGRAMS[name], "kombu")
    assert expected, "the Kombu run printed nothing: the program is not exercising anything"
    assert _run(PROGRAMS[name], "kelp") == expected
