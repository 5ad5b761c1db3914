"""RabbitMQ benchmark: kelp and kelp.aio against Kombu (py-amqp), pika and aio-pika on one broker, one run.

    eval "$(scripts/rabbitmq.sh start)"
    python bench/rabbitmq.py [--url URL] [--messages N] [--confirm-messages N] [--round-trips N] [--json]

Scenarios (each library on its own fresh queue; 256-byte bytes body, persistent, default exchange):

0. **publish, defaults** — each library's default options: kelp's pipelined confirms, timed until
   ``flush()`` returned (every message confirmed), against Kombu and pika, which do not confirm (timed
   until the last publish call returns).
1. **publish, no confirms** — ``Producer.publish(body, routing_key=q)`` N times (pika ``basic_publish``,
   aio-pika ``default_exchange.publish``); kelp with ``confirms=False``. Timed until the last publish
   call returns, then the queue count is checked.
2. **publish, confirms** — every library in its per-publish confirm mode: Kombu ``confirm_publish=True``,
   pika ``confirm_delivery()``, aio-pika ``publisher_confirms=True`` and kelp ``confirm_publish=True``,
   each publish call returning once confirmed. Rows marked ``batch 100`` publish 100 envelopes per
   ``publish_many`` call (one write, one wait for all confirms); ``gather 100`` rows run 100 concurrent
   single publishes.
3. **consume+ack, prefetch 100** — a queue pre-filled with N messages; a consumer acks each message in its
   callback, until all N are in.
4. **request/reply** — a server echoes each request to ``reply_to`` with the ``correlation_id``; the client
   sends one request at a time and waits for its reply; p50/p99 of the round trip (no confirms).

The broker uses most of a core under load: read the ratios, not the absolute rates. Kombu, pika and
aio-pika are imported only here; kelp never depends on them. (The file is not called ``amqp.py``: run as
a script, it would shadow py-amqp's ``amqp`` package, which Kombu imports, for every benchmark in bench/.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

BODY = b"x" * 256
PREFETCH = 100
BATCH = 100


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def wait_count(url: str, queue: str, n: int, timeout: float = 60) -> None:
    import kelp

    with kelp.Connection(url) as conn:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while (count := ch.queue_declare(queue, passive=True).message_count) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue}: {count} of {n} messages arrived")
            time.sleep(0.05)


def make_queue(url: str, n: int = 0) -> str:
    """A fresh durable queue, pre-filled with ``n`` messages."""
    import kelp
    from kelp._envelope import Envelope

    name = unique("q")
    with kelp.Connection(url) as conn:
        ch = conn.channel()
        ch.queue_declare(name, durable=True, auto_delete=False)
        for start in range(0, n, 1000):
            batch = [Envelope(BODY, {"delivery_mode": 2}, {}, "", name) for _ in range(min(1000, n - start))]
            ch.publish_batch(batch)
    return name


def drop_queue(url: str, name: str) -> None:
    import kelp

    with kelp.Connection(url) as conn:
        conn.channel().queue_delete(name)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- publish -------------------------------------------------------------------------------------------------


def kelp_options(confirm: bool | None) -> dict[str, Any]:
    """``confirm``: True waits per publish, False turns confirms off, None is the default (pipelined)."""
    if confirm is None:
        return {}
    return {"confirm_publish": True} if confirm else {"confirms": False}


def kelp_publish(url: str, queue: str, n: int, confirm: bool | None, batch: int = 1) -> float:
    import kelp

    with kelp.Connection(url, transport_options=kelp_options(confirm)) as conn:
        producer = conn.Producer()

        def run() -> None:
            if batch == 1:
                for _ in range(n):
                    producer.publish(BODY, routing_key=queue)
            else:
                for _ in range(0, n, batch):
                    producer.publish_many([producer.prepare(BODY, routing_key=queue) for _ in range(batch)])
            producer.flush()  # every message confirmed (nothing to wait for without pipelined confirms)

        return timed(run)


def kelp_aio_publish(url: str, queue: str, n: int, confirm: bool | None, batch: int = 1) -> float:
    import kelp.aio

    async def main() -> float:
        async with kelp.aio.Connection(url, transport_options=kelp_options(confirm)) as conn:
            producer = conn.Producer()
            start = time.perf_counter()
            if batch == 1:
                for _ in range(n):
                    await producer.publish(BODY, routing_key=queue)
            elif batch > 0:  # publish_many: one call per batch
                for _ in range(0, n, batch):
                    await producer.publish_many(
                        [producer.prepare(BODY, routing_key=queue) for _ in range(batch)]
                    )
            else:  # -batch concurrent tasks, each publishing one message
                for _ in range(0, n, -batch):
                    await asyncio.gather(*(producer.publish(BODY, routing_key=queue) for _ in range(-batch)))
            await producer.flush()
            return time.perf_counter() - start

    return asyncio.run(main())


def kombu_publish(url: str, queue: str, n: int, confirm: bool | None, batch: int = 1) -> float:
    import kombu

    options = {"confirm_publish": True} if confirm else {}
    with kombu.Connection(url.replace("amqp://", "pyamqp://"), transport_options=options) as conn:
        producer = conn.Producer()
        return timed(lambda: [producer.publish(BODY, routing_key=queue, delivery_mode=2) for _ in range(n)])


def pika_publish(url: str, queue: str, n: int, confirm: bool | None, batch: int = 1) -> float:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        return timed(lambda: [ch.basic_publish("", queue, BODY, props) for _ in range(n)])
    finally:
        conn.close()


def aio_pika_publish(url: str, queue: str, n: int, confirm: bool | None, batch: int = 1) -> float:
    import aio_pika

    async def main() -> float:
        conn = await aio_pika.connect(url)
        try:
            ch = await conn.channel(publisher_confirms=bool(confirm))
            exchange = ch.default_exchange
            start = time.perf_counter()
            if batch == 1:
                for _ in range(n):
                    await exchange.publish(aio_pika.Message(BODY, delivery_mode=2), routing_key=queue)
            else:
                for _ in range(0, n, abs(batch)):
                    await asyncio.gather(
                        *(
                            exchange.publish(aio_pika.Message(BODY, delivery_mode=2), routing_key=queue)
                            for _ in range(abs(batch))
                        )
                    )
            return time.perf_counter() - start
        finally:
            await conn.close()

    return asyncio.run(main())


# -- consume -------------------------------------------------------------------------------------------------


def kelp_consume(url: str, queue: str, n: int) -> float:
    import kelp

    with kelp.Connection(url) as conn:
        got = [0]

        def on_message(body: Any, message: Any) -> None:
            got[0] += 1
            message.ack()

        consumer = conn.Consumer([kelp.Queue(queue, durable=True, auto_delete=False)], callbacks=[on_message])
        consumer.qos(prefetch_count=PREFETCH)
        start = time.perf_counter()
        consumer.consume()
        while got[0] < n:
            conn.drain_events(timeout=10)
        return time.perf_counter() - start


def kelp_aio_consume(url: str, queue: str, n: int) -> float:
    import kelp.aio

    async def main() -> float:
        async with kelp.aio.Connection(url) as conn:
            got = [0]

            async def on_message(body: Any, message: Any) -> None:
                got[0] += 1
                await message.ack()

            q = kelp.aio.Queue(queue, durable=True, auto_delete=False)
            consumer = conn.Consumer([q], callbacks=[on_message])
            await consumer.qos(prefetch_count=PREFETCH)
            start = time.perf_counter()
            await consumer.consume()
            while got[0] < n:
                await conn.drain_events(timeout=10)
            return time.perf_counter() - start

    return asyncio.run(main())


def kombu_consume(url: str, queue: str, n: int) -> float:
    import kombu

    with kombu.Connection(url.replace("amqp://", "pyamqp://")) as conn:
        got = [0]

        def on_message(body: Any, message: Any) -> None:
            got[0] += 1
            message.ack()

        q = kombu.Queue(queue, durable=True, auto_delete=False)
        consumer = conn.Consumer([q], callbacks=[on_message], accept=["application/data"])
        consumer.qos(prefetch_count=PREFETCH)
        start = time.perf_counter()
        consumer.consume()
        while got[0] < n:
            conn.drain_events(timeout=10)
        return time.perf_counter() - start


def pika_consume(url: str, queue: str, n: int) -> float:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        got = [0]

        def on_message(channel: Any, method: Any, props: Any, body: bytes) -> None:
            got[0] += 1
            channel.basic_ack(method.delivery_tag)
            if got[0] >= n:
                channel.stop_consuming()

        start = time.perf_counter()
        ch.basic_consume(queue, on_message)
        ch.start_consuming()
        return time.perf_counter() - start
    finally:
        conn.close()


def aio_pika_consume(url: str, queue: str, n: int) -> float:
    import aio_pika

    async def main() -> float:
        conn = await aio_pika.connect(url)
        try:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=PREFETCH)
            q = await ch.declare_queue(queue, passive=True)
            done = asyncio.get_running_loop().create_future()
            got = [0]

            async def on_message(message: Any) -> None:
                await message.ack()
                got[0] += 1
                if got[0] >= n and not done.done():
                    done.set_result(None)

            start = time.perf_counter()
            await q.consume(on_message)
            await asyncio.wait_for(done, 120)
            return time.perf_counter() - start
        finally:
            await conn.close()

    return asyncio.run(main())


# -- request/reply -------------------------------------------------------------------------------------------


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50 * 1e6, p99 * 1e6


def _echo_server(url: str, queue: str, ready: threading.Event, stop: threading.Event) -> None:
    """A kelp echo server in a thread (the same server for every client library)."""
    import kelp

    with kelp.Connection(url, transport_options={"confirms": False}) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=True)

        def on_request(message: Any) -> None:
            reply = ch.prepare_message(
                message.body, properties={"correlation_id": message.properties.get("correlation_id")}
            )
            ch.basic_publish(reply, routing_key=message.properties["reply_to"])
            message.ack()

        ch.basic_consume(queue, callback=on_request)
        ready.set()
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass


def kelp_rpc(url: str, server: str, n: int) -> list[float]:
    import kelp

    with kelp.Connection(url, transport_options={"confirms": False}) as conn:
        ch = conn.channel()
        reply_q = ch.queue_declare("", exclusive=True).queue
        replies: list[Any] = []
        ch.basic_consume(reply_q, no_ack=True, callback=replies.append)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            ch.basic_publish(
                ch.prepare_message(BODY, properties={"reply_to": reply_q, "correlation_id": str(i)}),
                routing_key=server,
            )
            while not replies:
                conn.drain_events(timeout=5)
            samples.append(time.perf_counter() - start)
            replies.clear()
        return samples


def kelp_aio_rpc(url: str, server: str, n: int) -> list[float]:
    import kelp.aio

    async def main() -> list[float]:
        async with kelp.aio.Connection(url, transport_options={"confirms": False}) as conn:
            ch = await conn.channel()
            reply_q = (await ch.queue_declare("", exclusive=True)).queue
            replies: list[Any] = []
            await ch.basic_consume(reply_q, no_ack=True, callback=replies.append)
            samples = []
            for i in range(n):
                start = time.perf_counter()
                props = {"reply_to": reply_q, "correlation_id": str(i)}
                await ch.basic_publish(ch.prepare_message(BODY, properties=props), routing_key=server)
                while not replies:
                    await conn.drain_events(timeout=5)
                samples.append(time.perf_counter() - start)
                replies.clear()
            return samples

    return asyncio.run(main())


def kombu_rpc(url: str, server: str, n: int) -> list[float]:
    import kombu

    with kombu.Connection(url.replace("amqp://", "pyamqp://")) as conn:
        ch = conn.channel()
        reply_q, _, _ = ch.queue_declare("", exclusive=True)
        replies: list[Any] = []
        ch.basic_consume(reply_q, no_ack=True, callback=replies.append)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            msg = ch.prepare_message(BODY, properties={"reply_to": reply_q, "correlation_id": str(i)})
            ch.basic_publish(msg, routing_key=server)
            while not replies:
                conn.drain_events(timeout=5)
            samples.append(time.perf_counter() - start)
            replies.clear()
        return samples


def aio_pika_rpc(url: str, server: str, n: int) -> list[float]:
    import aio_pika

    async def main() -> list[float]:
        conn = await aio_pika.connect(url)
        try:
            ch = await conn.channel(publisher_confirms=False)
            reply_q = await ch.declare_queue("", exclusive=True)
            waiter: list[asyncio.Future[None]] = []

            async def on_reply(message: Any) -> None:
                waiter[0].set_result(None)

            await reply_q.consume(on_reply, no_ack=True)
            samples = []
            loop = asyncio.get_running_loop()
            for i in range(n):
                waiter[:] = [loop.create_future()]
                start = time.perf_counter()
                message = aio_pika.Message(BODY, reply_to=reply_q.name, correlation_id=str(i))
                await ch.default_exchange.publish(message, routing_key=server)
                await asyncio.wait_for(waiter[0], 5)
                samples.append(time.perf_counter() - start)
            return samples
        finally:
            await conn.close()

    return asyncio.run(main())


# -- the run -------------------------------------------------------------------------------------------------

PUBLISHERS = {
    "kelp": kelp_publish,
    "kelp.aio": kelp_aio_publish,
    "kombu": kombu_publish,
    "pika": pika_publish,
    "aio-pika": aio_pika_publish,
}
CONSUMERS = {
    "kelp": kelp_consume,
    "kelp.aio": kelp_aio_consume,
    "kombu": kombu_consume,
    "pika": pika_consume,
    "aio-pika": aio_pika_consume,
}
RPC = {"kelp": kelp_rpc, "kelp.aio": kelp_aio_rpc, "kombu": kombu_rpc, "aio-pika": aio_pika_rpc}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("KELP_TEST_AMQP_URL"))
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--confirm-messages", type=int, default=5000)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.url:
        parser.error("no broker: pass --url or set KELP_TEST_AMQP_URL (scripts/rabbitmq.sh start)")
    url: str = args.url
    rows: list[dict[str, Any]] = []

    def publish_row(scenario: str, library: str, n: int, confirm: bool | None, batch: int = 1) -> None:
        queue = make_queue(url)
        try:
            seconds = PUBLISHERS[library](url, queue, n, confirm, batch)
            wait_count(url, queue, n)
        finally:
            drop_queue(url, queue)
        label = {1: library, BATCH: f"{library} (batch {BATCH})", -BATCH: f"{library} (gather {BATCH})"}[
            batch
        ]
        rows.append({"scenario": scenario, "library": label, "base": library, "rate": n / seconds})
        log(f"{scenario:<24} {label:<22} {n / seconds:>10,.0f} msg/s")

    for library in ("kelp", "kelp.aio", "kombu", "pika"):
        publish_row("publish, defaults", library, args.messages, None)
    for library in PUBLISHERS:
        publish_row("publish, no confirms", library, args.messages, False)
    publish_row("publish, no confirms", "kelp", args.messages, False, BATCH)
    for library in PUBLISHERS:
        publish_row("publish, confirms", library, args.confirm_messages, True)
    for library in ("kelp", "kelp.aio"):
        publish_row("publish, confirms", library, args.messages, True, BATCH)
    for library in ("kelp.aio", "aio-pika"):
        publish_row("publish, confirms", library, args.messages, True, -BATCH)

    for library, consume in CONSUMERS.items():
        queue = make_queue(url, args.messages)
        try:
            seconds = consume(url, queue, args.messages)
        finally:
            drop_queue(url, queue)
        rate = args.messages / seconds
        rows.append(
            {"scenario": "consume+ack, prefetch 100", "library": library, "base": library, "rate": rate}
        )
        log(f"{'consume+ack':<24} {library:<22} {rate:>10,.0f} msg/s")

    server = unique("rpc")
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_echo_server, args=(url, server, ready, stop), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        for library, rpc in RPC.items():
            p50, p99 = _percentiles(rpc(url, server, args.round_trips))
            rows.append(
                {"scenario": "request/reply", "library": library, "base": library, "p50": p50, "p99": p99}
            )
            log(f"{'request/reply':<24} {library:<22} p50 {p50:,.0f} us  p99 {p99:,.0f} us")
    finally:
        stop.set()
        thread.join(10)

    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"\nRabbitMQ benchmark ({args.messages:,} messages; "
        f"{args.confirm_messages:,} for per-message confirms)\n"
    )
    print("| scenario | library | rate (msg/s) | vs Kombu | vs aio-pika |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        if "rate" not in row:
            continue
        same = [r for r in rows if r["scenario"] == row["scenario"] and "rate" in r]
        kombu = next((r["rate"] for r in same if r["library"] == "kombu"), None)
        aiopika = next((r["rate"] for r in same if r["library"] == "aio-pika"), None)
        vs_kombu = f"{row['rate'] / kombu:.2f}x" if kombu else ""
        vs_aiopika = f"{row['rate'] / aiopika:.2f}x" if aiopika else ""
        print(f"| {row['scenario']} | {row['library']} | {row['rate']:,.0f} | {vs_kombu} | {vs_aiopika} |")
    print("\n| request/reply | p50 (us) | p99 (us) |\n|---|---:|---:|")
    for row in rows:
        if "p50" in row:
            print(f"| {row['library']} | {row['p50']:,.0f} | {row['p99']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
