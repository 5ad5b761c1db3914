# Generated from tests/differential/aio/test_codecs_common.py by scripts/unasync.py; do not edit.
"""Kombu's ``serialization``, ``compression``, ``common`` and ``message`` modules, compared with Kombu on
RabbitMQ (the sync twin under Kombu and kelp, this source under ``kelp``)."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import pytest

from ..harness import private_logger
from .helpers import attempt, count, declared, drain_until, raw, same, take, wait_take

# --- serialization -----------------------------------------------------------------------------------

VALUES = [{"a": [1, 2.5, None, True], "s": "é"}, ["x", 1], "text", b"\x00bytes", 7, None]


def dumps_and_loads(lib, conn, names, serializer):
    out = []
    for value in VALUES:
        dumped = attempt(partial(lib.serialization.dumps, value, serializer=serializer))
        if hasattr(dumped, "name"):
            out.append(dumped)
            continue
        content_type, encoding, body = dumped
        # The bytes themselves differ where kelp's JSON is compact (docs/migrating-from-kombu.md).
        loaded = lib.serialization.loads(raw(body), content_type, encoding, accept=[content_type])
        out.append((content_type, encoding, raw(loaded) if isinstance(loaded, str | bytes) else loaded))
    return out


@pytest.mark.parametrize("serializer", [None, "json", "yaml", "msgpack", "pickle", "unknown"])
def test_dumps_and_loads(reference_url, subject_url, serializer):
    same(reference_url, subject_url, dumps_and_loads, serializer)


PAYLOADS = [
    (b'{"a":1}', "application/json", "utf-8"),
    (b"raw", "application/x-custom", "binary"),
    (b"data", "application/data", "binary"),
    (b"\x80\x04K\x01.", "application/x-python-serialize", "binary"),
    (b"a: 1\n", "application/x-yaml", "utf-8"),
]


def accept_lists(lib, conn, names):
    serialization = lib.serialization
    accepts = {
        "json": serialization.prepare_accept_content(["json"]),
        "custom": serialization.prepare_accept_content(["application/x-custom"]),
        "pickle+yaml": serialization.prepare_accept_content(["pickle", "yaml"]),
    }
    grid = {
        (content_type, label): attempt(
            partial(serialization.loads, body, content_type, encoding, accept=accept)
        )
        for body, content_type, encoding in PAYLOADS
        for label, accept in accepts.items()
    }
    return {
        "prepared": {label: sorted(accept) for label, accept in accepts.items()},
        "unknown name": attempt(lambda: serialization.prepare_accept_content(["no-such-serializer"])),
        "none": serialization.prepare_accept_content(None),
        "grid": sorted((f"{ctype} / {label}", result) for (ctype, label), result in grid.items()),
        # force skips the default list, never an explicit accept list.
        "forced": attempt(
            partial(serialization.loads, b'{"a":1}', "application/json", "utf-8", accept=set(), force=True)
        ),
        "forced default": serialization.loads(
            b"\x80\x04K\x01.", "application/x-python-serialize", "binary", force=True
        ),
    }


def test_accept_lists_and_prepare_accept_content(reference_url, subject_url):
    same(reference_url, subject_url, accept_lists)


def enable_and_disable(lib, conn, names):
    registry = lib.serialization.registry

    def decode() -> Any:
        return lib.serialization.loads(b"a: 1\n", "application/x-yaml", "utf-8")

    before = attempt(decode)
    registry.enable("yaml")
    try:
        enabled = attempt(decode)
        registry.disable("application/x-yaml")
        disabled = attempt(decode)
    finally:
        if not hasattr(before, "name"):
            registry.enable("yaml")
    return before, enabled, disabled


def test_registry_enable_and_disable(reference_url, subject_url):
    same(reference_url, subject_url, enable_and_disable)


def raw_bodies(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    producer.publish(b"\x01\x02", routing_key=queue.name)
    producer.publish("text", routing_key=queue.name)
    producer.publish(
        b"labelled", routing_key=queue.name, content_type="application/data", content_encoding="binary"
    )
    producer.publish("x", routing_key=queue.name, serializer="raw")
    count(queue, 4)
    return [(m.content_type, m.content_encoding, raw(m.payload)) for m in take(queue, 4)]


def test_raw_bodies(reference_url, subject_url):
    same(reference_url, subject_url, raw_bodies)


# --- compression -------------------------------------------------------------------------------------


def compression_codecs(lib, conn, names):
    compression = lib.compression
    body = b"compress me " * 40
    out = {}
    for method in ("zlib", "gzip", "bzip2", "lzma", "xz", "brotli", "application/x-gzip"):
        compressed, content_type = compression.compress(body, method)
        out[method] = (
            content_type,
            compression.decompress(compressed, content_type) == body,
            len(compressed) < len(body),
        )
    encoder, content_type = compression.get_encoder("zlib")
    return {
        "methods": out,
        # kelp also has zstd through the zstandard library, which Kombu registers only with python-zstd.
        "encoders": sorted(set(compression.encoders()) - {"application/zstd"}),
        "get_encoder": content_type,
        "get_decoder": compression.get_decoder("application/x-gzip")(encoder(body)) == body,
    }


def test_compression_module(reference_url, subject_url):
    same(reference_url, subject_url, compression_codecs)


# --- common ------------------------------------------------------------------------------------------


def common_uuid(lib, conn, names):
    made = [lib.common.uuid() for _ in range(3)]
    return [type(u).__name__ for u in made], {uuid.UUID(u).version for u in made}, len(set(made))


def test_uuid(reference_url, subject_url):
    same(reference_url, subject_url, common_uuid)


def eventloop_and_drain_consumer(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(3):
        producer.publish({"n": n}, routing_key=queue.name)
    count(queue, 3)
    seen: list[Any] = []
    channel = conn.channel()
    consumer = lib.Consumer(channel, [queue], callbacks=[lambda body, message: seen.append(message)])
    consumer.consume()
    # eventloop: how many rounds dispatched something depends on how the frames arrived, so only what
    # the callbacks got is compared.
    for _ in lib.common.eventloop(conn, limit=20, timeout=0.3, ignore_timeouts=True):
        if len(seen) == 3:
            break
    # Cancel first: a delivery arriving during Kombu's cancel() still reaches the callbacks.
    consumer.cancel()
    for message in seen:
        message.requeue()
    quiet = attempt(lambda: drain_once(lib, conn))
    drained = []
    again = lib.Consumer(conn.channel(), [queue])
    for body, message in lib.common.drain_consumer(again, limit=6, timeout=0.3):
        drained.append((body, message.delivery_info["redelivered"]))
        message.ack()
    return sorted(m.payload["n"] for m in seen), quiet, drained, count(queue, 0)


def drain_once(lib: Any, conn: Any) -> None:
    for _ in lib.common.eventloop(conn, limit=1, timeout=0.2):
        pass


def test_eventloop_and_drain_consumer(reference_url, subject_url):
    same(reference_url, subject_url, eventloop_and_drain_consumer)


def itermessages_scenario(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(3):
        producer.publish(n, routing_key=queue.name)
    count(queue, 3)
    got = []
    channel = conn.channel()
    for body, message in lib.common.itermessages(conn, channel, queue, limit=2, timeout=1):
        got.append((body, message.delivery_info["routing_key"] == queue.name))
        message.ack()
    # A message received but not yielded is back in the queue once the channel is closed at the latest
    # (kelp requeues it at once: docs/migrating-from-kombu.md).
    channel.close()
    return got, count(queue, 1)


def test_itermessages(reference_url, subject_url):
    same(reference_url, subject_url, itermessages_scenario)


def request_reply(lib, conn, names):
    requests = declared(lib, conn, names)
    replies = declared(lib, conn, names)
    lib.Producer(conn).publish(
        {"ask": 1}, routing_key=requests.name, reply_to=replies.name, correlation_id="c-42"
    )
    [request] = wait_take(requests, 1)
    lib.common.send_reply(
        lib.Exchange(""), request, {"answer": 42}, producer=lib.Producer(conn), type="answer"
    )
    count(replies, 1)
    [reply] = take(replies, 1, ack=False)
    reply.requeue()
    count(replies, 1)
    channel = conn.channel()
    collected = []
    for body in lib.common.collect_replies(conn, channel, replies, limit=1, timeout=2, no_ack=False):
        collected.append(body)
    return reply, collected, attempt(lambda: count(replies, 0))


def test_send_reply_and_collect_replies(reference_url, subject_url):
    same(reference_url, subject_url, request_reply)


# --- Message methods and attributes --------------------------------------------------------------------


def message_methods(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    for n in range(3):
        producer.publish({"n": n}, routing_key=queue.name, headers={"k": n})
    count(queue, 3)
    first, second, third = take(queue, 3, ack=False)
    logger, records = private_logger()
    first.ack_log_error(logger, (Exception,))
    first.ack_log_error(logger, (Exception,))
    after_ack = list(records.seen)
    second.reject_log_error(logger, (Exception,), requeue=True)
    second.reject_log_error(logger, (Exception,))
    decoded = (third.decode(), third.decode() == third.payload)
    third.ack_log_error(logger, (KeyError,))
    # An error not in ``errors`` is raised, not logged.
    unlisted = attempt(lambda: third.ack_log_error(logger, (KeyError,)))
    redelivered = wait_take(queue, 1)
    return {
        "logged": (after_ack, records.seen),
        # second was rejected with requeue=True: kelp says REQUEUED there (docs/migrating-from-kombu.md).
        "states": [(m.acknowledged, m._state) for m in (first, third)],
        "unlisted": unlisted,
        "decoded": decoded,
        "delivery_tag": type(first.delivery_tag).__name__,
        "delivery_info": sorted(set(first.delivery_info) - {"consumer_tag"}),
        "attributes": (first.content_type, first.content_encoding, first.headers),
        "redelivered": [(m.payload, m.delivery_info["redelivered"]) for m in redelivered],
    }


def test_message_methods_and_attributes(reference_url, subject_url):
    same(reference_url, subject_url, message_methods)


def consumer_accept(lib, conn, names):
    queue = declared(lib, conn, names)
    producer = lib.Producer(conn)
    producer.publish({"json": 1}, routing_key=queue.name)
    producer.publish({"yaml": 1}, routing_key=queue.name, serializer="yaml")
    producer.publish({"pickle": 1}, routing_key=queue.name, serializer="pickle")
    count(queue, 3)
    decoded: list[Any] = []
    errors: list[Any] = []

    def on_decode_error(message: Any, exc: Exception) -> None:
        errors.append((message.content_type, type(exc).__name__))
        message.ack()

    def on_body(body: Any, message: Any) -> None:
        decoded.append(body)
        message.ack()

    consumer = lib.Consumer(
        conn.channel(),
        [queue],
        callbacks=[on_body],
        accept=["json", "application/x-yaml"],
        on_decode_error=on_decode_error,
    )
    consumer.consume()
    drain_until(conn, lambda: len(decoded) + len(errors) >= 3)
    consumer.cancel()
    return decoded, errors, count(queue, 0)


def test_consumer_accept_list(reference_url, subject_url):
    same(reference_url, subject_url, consumer_accept)
