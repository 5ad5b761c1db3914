"""The delivery model on amqp:// (issue #9), on a real broker: what a returned publish guarantees with the
default options (pipelined confirms), what a cut connection or a killed process does to messages, and how
refusals in a pipelined stream are reported."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
from kelp_rabbitmq_kit import Proxy

import kelp
import kelp.aio
from kelp._envelope import Envelope
from kelp.exceptions import MessageNacked

PUBLISHER = """
import asyncio, os, signal, sys
import kelp, kelp.aio

url, queue, n, face, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
if face == "sync":
    conn = kelp.Connection(url)
    producer = conn.Producer()
    for i in range(n):
        producer.publish({"i": i}, routing_key=queue)
    if after == "flush":
        producer.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the moment the last publish (or the flush) returned: no close

async def main():
    conn = kelp.aio.Connection(url)
    await conn.connect()
    producer = conn.Producer()
    for i in range(n):
        await producer.publish({"i": i}, routing_key=queue)
    if after == "flush":
        await producer.flush()
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""

LOOPING_PUBLISHER = """
import sys
import kelp

url, queue = sys.argv[1], sys.argv[2]
with kelp.Connection(url) as conn:
    producer = conn.Producer()
    for i in range(1_000_000):
        producer.publish({"i": i}, routing_key=queue)
        print(i, flush=True)
"""

CONSUMER = """
import sys
import kelp

url, queue, n, prefetch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with kelp.Connection(url) as conn:
    held = []
    consumer = conn.Consumer(kelp.Queue(queue, no_declare=True), callbacks=[lambda body, m: held.append(m)])
    consumer.qos(prefetch_count=prefetch)
    with consumer:
        while len(held) < n:
            conn.drain_events(timeout=10)
        print("holding", len(held), flush=True)
        sys.stdin.read()  # busy with them (never acks) until killed
"""


def run(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def count_settles(amqp_url: str, queue: str, n: int, timeout: float = 30) -> int:
    """The queue's message count once it reaches ``n`` or stops changing for 3 s (a busy shared broker
    may take a while to route what it has read)."""
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while True:
            count = ch.queue_declare(queue, passive=True).message_count
            if count == n or time.monotonic() > deadline:
                return count
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since > 3.0:
                return count
            time.sleep(0.05)


def fill_durable_queue(amqp_url: str, queue: str, n: int) -> None:
    """Declare ``queue`` durable and put ``{"i": 0}`` ... ``{"i": n - 1}`` in it, confirmed."""
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"i": i}, routing_key=queue)
        producer.flush()


def drain_queue_settled(amqp_url: str, queue: str, at_least: int) -> list[int]:
    count_settles(amqp_url, queue, at_least)
    return drain_queue(amqp_url, queue)


def drain_queue(amqp_url: str, queue: str) -> list[int]:
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        out = []
        while (message := ch.basic_get(queue, no_ack=True)) is not None:
            out.append(message.decode()["i"])
        return out


@pytest.mark.parametrize("face", ["sync", "aio"])
def test_a_publisher_killed_right_after_its_flush_loses_nothing(
    amqp_url: str, names: Callable[[str], str], face: str
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    child = run(PUBLISHER, amqp_url, queue, "3000", face, "flush")
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert count_settles(amqp_url, queue, 3000) == 3000


@pytest.mark.parametrize("face", ["sync", "aio"])
def test_a_publisher_killed_right_after_its_last_publish_loses_nothing(
    amqp_url: str, names: Callable[[str], str], face: str
) -> None:
    """The socket keeper holds the connection open past the kill, so the kernel sends what was queued and
    closes it cleanly: RabbitMQ reads every message (kelp._keeper)."""
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    child = run(PUBLISHER, amqp_url, queue, "3000", face, "publish")
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert count_settles(amqp_url, queue, 3000) == 3000
    assert drain_queue(amqp_url, queue) == list(range(3000))


def test_a_publisher_killed_mid_loop_keeps_every_returned_publish(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    """Killed from outside at an arbitrary moment of a fast loop: every message whose publish() had returned
    (the publisher says so on stdout after each) is in the queue."""
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    returned = -1
    with run(LOOPING_PUBLISHER, amqp_url, queue) as child:
        assert child.stdout is not None
        for line in child.stdout:
            returned = int(line)
            if returned >= 2500:
                child.kill()
                break
        child.communicate(timeout=30)
    stored = drain_queue_settled(amqp_url, queue, returned + 1)
    assert stored[: returned + 1] == list(range(returned + 1))


def test_without_a_keeper_a_killed_publisher_loses_at_most_a_tail(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    """Where the keeper cannot run, every publish returns once its bytes were sent and the confirms already
    arrived were read; a confirm landing between that read and the kill still leaves unread bytes, the
    kernel resets the connection and RabbitMQ drops what it had not read (docs/transports.md). Measured:
    the last 20-100 messages in about one run in twelve; never a gap."""
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    child = run(
        "import kelp._keeper; kelp._keeper._keeper._failed = True\n" + PUBLISHER,
        amqp_url,
        queue,
        "3000",
        "sync",
        "publish",
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    count_settles(amqp_url, queue, 3000)
    got = drain_queue(amqp_url, queue)
    assert got == list(range(len(got)))  # in order, no gap: only a tail can be missing
    assert len(got) >= 3000 - 500, len(got)


def test_a_killed_consumer_fed_a_steady_stream_gives_its_messages_back_within_two_seconds(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    """No prefetch limit, and messages keep coming after the kill: RabbitMQ goes on feeding the dead
    consumer's socket, which the socket keeper holds open while the broker still talks; the keeper lets go
    once deliveries pour in (more than a confirm stream would carry), not when the stream stops."""
    queue = names("q")
    n = 100
    fill_durable_queue(amqp_url, queue, n)
    with run(CONSUMER, amqp_url, queue, str(n), "0") as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == f"holding {n}"
        got: list[kelp.Message] = []
        with kelp.Connection(amqp_url) as conn:
            consumer = conn.Consumer(
                kelp.Queue(queue, no_declare=True), callbacks=[lambda body, m: got.append(m)]
            )
            with consumer:
                producer = conn.Producer()
                child.kill()
                child.communicate(timeout=10)
                killed = time.monotonic()
                sent, back = n, None
                while time.monotonic() - killed < 4.0:  # a steady stream for 4 s
                    for i in range(sent, sent + 50):
                        producer.publish({"i": i, "pad": "x" * 1024}, routing_key=queue)
                    sent += 50
                    try:
                        conn.drain_events(timeout=0.01)
                    except TimeoutError:
                        pass
                    if back is None and any(m.decode()["i"] < n for m in got):
                        back = time.monotonic() - killed
                while len(got) < sent and time.monotonic() - killed < 40:
                    try:
                        conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        pass
                for m in got:
                    m.ack()
    assert back is not None
    assert back < 2.0, back
    assert sorted(m.decode()["i"] for m in got) == list(range(sent))


class CuttingProxy(Proxy):
    """A proxy that cuts every connection each time ``every`` more bytes went from clients to the broker."""

    def __init__(self, target_port: int, every: int) -> None:
        self.every = every
        self.forwarded = 0
        self.cuts = 0
        super().__init__(target_port)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        upstream = sink.getpeername()[1] == self.target_port
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                if upstream:
                    self.forwarded += len(data)
                    if self.forwarded >= self.every * (self.cuts + 1):
                        self.cuts += 1
                        self.cut()
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_a_connection_cut_every_few_hundred_kb_loses_nothing_with_retry(
    amqp_url: str, amqp_port: int, names: Callable[[str], str]
) -> None:
    queue = names("q")
    n = 3000
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    proxy = CuttingProxy(amqp_port, every=300_000)
    policy = {"max_retries": 20, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}
    pad = "x" * 900
    try:
        with kelp.Connection(proxy.url()) as conn:
            producer = conn.Producer()
            for i in range(n):
                producer.publish({"i": i, "pad": pad}, routing_key=queue, retry=True, retry_policy=policy)
            for _ in range(20):  # the barrier may be cut too: reconnecting publishes the outbox again
                try:
                    conn.flush(timeout=30)
                    break
                except conn.recoverable_connection_errors:
                    conn.ensure_connection(**policy)
            else:
                pytest.fail("flush never got through")
            assert conn.transport is not None
            assert conn.transport.unconfirmed() == []
    finally:
        proxy.close()
    assert proxy.cuts >= 5, proxy.cuts
    got = drain_queue(amqp_url, queue)
    assert set(got) == set(range(n))  # every message at least once; duplicates are allowed
    assert len(got) - n < proxy.cuts * 10_000  # at most one outbox per cut published again


async def test_a_connection_cut_every_few_hundred_kb_loses_nothing_with_retry_aio(
    amqp_url: str, amqp_port: int, names: Callable[[str], str]
) -> None:
    queue = names("q")
    n = 2000
    async with kelp.aio.Connection(amqp_url) as conn:
        await (await conn.channel()).queue_declare(queue, durable=True, auto_delete=False)
    proxy = CuttingProxy(amqp_port, every=300_000)
    policy = {"max_retries": 20, "interval_start": 0, "interval_step": 0.05, "interval_max": 0.2}
    pad = "x" * 900
    try:
        async with kelp.aio.Connection(proxy.url()) as conn:
            await conn.connect()
            producer = conn.Producer()
            for i in range(n):
                await producer.publish(
                    {"i": i, "pad": pad}, routing_key=queue, retry=True, retry_policy=policy
                )
            for _ in range(20):
                try:
                    await conn.flush(timeout=30)
                    break
                except conn.recoverable_connection_errors:
                    await conn.ensure_connection(**policy)
            else:
                pytest.fail("flush never got through")
    finally:
        proxy.close()
    assert proxy.cuts >= 3, proxy.cuts
    assert set(drain_queue(amqp_url, queue)) == set(range(n))


def test_a_nack_in_the_middle_of_a_pipelined_stream_is_reported_by_flush(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    full, roomy = names("full"), names("roomy")
    expected = list(range(7, 40, 2))  # every other message goes to a queue that holds 3
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.queue_declare(full, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
        ch.queue_declare(roomy)
        producer = conn.Producer()
        # one pipelined stream (one write, no waiting for confirms): the refusals are reported by flush,
        # or by publish_many itself if they came while its bytes were still being sent
        stream = [producer.prepare({"i": i}, routing_key=full if i % 2 else roomy) for i in range(40)]
        reported = []
        for call in (lambda: producer.publish_many(stream), lambda: producer.flush(timeout=10)):
            try:
                call()
            except MessageNacked as exc:
                reported.append(exc.envelopes)
        # each refusal once, the very envelopes, in order (split between the two calls by timing)
        assert [envelope for batch in reported for envelope in batch] == [stream[i] for i in expected]
        producer.flush(timeout=10)  # each refusal is reported once; the rest were confirmed
        assert conn.transport is not None
        assert conn.transport.unconfirmed() == []
        assert sorted(drain_queue(amqp_url, roomy)) == list(range(0, 40, 2))
        assert drain_queue(amqp_url, full) == [1, 3, 5]

        # one publish at a time: a refusal comes from a later publish or from flush, never lost
        refused: list[Envelope] = []
        for i in range(40):
            try:
                producer.publish({"i": i}, routing_key=full if i % 2 else roomy)
            except MessageNacked as exc:
                refused.extend(exc.envelopes)
        try:
            producer.flush(timeout=10)
        except MessageNacked as exc:
            refused.extend(exc.envelopes)
        assert sorted(json.loads(e.body)["i"] for e in refused) == expected
    assert sorted(drain_queue(amqp_url, roomy)) == list(range(0, 40, 2))
    assert drain_queue(amqp_url, full) == [1, 3, 5]


async def test_a_nack_in_a_pipelined_stream_is_reported_aio(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    full = names("full")
    async with kelp.aio.Connection(amqp_url) as conn:
        ch = await conn.channel()
        await ch.queue_declare(full, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
        producer = conn.Producer()
        results = await asyncio.gather(
            *(producer.publish({"i": i}, routing_key=full) for i in range(5)), return_exceptions=True
        )
        refused = [e for r in results if isinstance(r, MessageNacked) for e in r.envelopes]
        assert all(r is None or isinstance(r, MessageNacked) for r in results), results
        try:
            await producer.flush(timeout=10)
        except MessageNacked as exc:
            refused.extend(exc.envelopes)
        assert sorted(json.loads(e.body)["i"] for e in refused) == [2, 3, 4]
        await producer.flush(timeout=10)  # reported once


def test_the_outbox_is_bounded_by_count_and_bytes(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    for options, bound in (({"max_unconfirmed": 3}, 3), ({"max_unconfirmed_bytes": 1000}, 2)):
        with kelp.Connection(amqp_url, transport_options=options) as conn:
            conn.channel().queue_declare(queue, durable=True, auto_delete=False)
            transport = conn.transport
            assert transport is not None
            producer = conn.Producer()
            most = 0
            for _ in range(200):
                producer.publish(b"x" * 600, routing_key=queue, content_type="application/data")
                most = max(most, len(transport.unconfirmed()))
            assert 1 <= most <= bound
            conn.flush(timeout=10)
    assert count_settles(amqp_url, queue, 400) == 400


async def test_gathered_publishes_share_the_pipeline_aio(amqp_url: str, names: Callable[[str], str]) -> None:
    """With confirm_publish each publish waits for its own confirm, but concurrent ones wait together."""
    queue = names("q")
    async with kelp.aio.Connection(amqp_url, transport_options={"confirm_publish": True}) as conn:
        ch = await conn.channel()
        await ch.queue_declare(queue, durable=True, auto_delete=False)
        producer = conn.Producer()
        transport = conn.transport
        assert transport is not None
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, len(transport.unconfirmed()))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.gather(*(producer.publish({"i": i}, routing_key=queue) for i in range(500)))
        finally:
            watcher.cancel()
        assert transport.unconfirmed() == []
        assert most > 50, most  # many publishes were awaiting their confirms at once
        assert (await ch.queue_declare(queue, passive=True)).message_count == 500


def test_a_killed_consumers_messages_go_to_another_within_two_seconds(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    n = 20
    fill_durable_queue(amqp_url, queue, n)
    child = run(CONSUMER, amqp_url, queue, str(n), str(n))
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == f"holding {n}", child.stderr.read() if child.stderr else ""
        got: list[kelp.Message] = []
        with kelp.Connection(amqp_url) as conn:
            consumer = conn.Consumer(
                kelp.Queue(queue, no_declare=True), callbacks=[lambda body, m: got.append(m)]
            )
            with consumer:
                # a consumer busy with its messages keeps them
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
                assert got == []
                child.kill()  # SIGKILL
                killed = time.monotonic()
                while len(got) < n and time.monotonic() - killed < 10:
                    try:
                        conn.drain_events(timeout=0.1)
                    except TimeoutError:
                        pass
                took = time.monotonic() - killed
                assert len(got) == n
                assert took < 2.0, took
                assert all(m.redelivered for m in got)
                assert sorted(m.decode()["i"] for m in got) == list(range(n))
                for m in got:
                    m.ack()
    finally:
        child.kill()
        child.wait(timeout=10)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def test_threads_publishing_on_one_connection_share_the_outbox(
    amqp_url: str, names: Callable[[str], str]
) -> None:
    queue = names("q")
    with kelp.Connection(amqp_url) as conn:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
        errors: list[BaseException] = []

        def publish(start: int) -> None:
            try:
                channel = conn.channel()
                for i in range(start, start + 500):
                    channel.publish_batch([kelp.Producer(channel).prepare({"i": i}, routing_key=queue)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(k * 500,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        conn.flush(timeout=30)
    assert sorted(drain_queue(amqp_url, queue)) == list(range(2000))
