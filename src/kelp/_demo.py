"""The ``kelp demo`` scenarios: request/reply, broadcast, publish/subscribe and acknowledgements,
narrated on stdout. Every wait is bounded; everything the demo declares is deleted at the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from kelp import Connection, Consumer, Exchange, Message, Producer, Queue
from kelp.exceptions import OperationalError

__all__ = ["Demo", "mode_name", "mode_text"]

#: Every wait in the demo is bounded by this many seconds.
WAIT = 5.0


def mode_name(properties: dict[str, Any]) -> str:
    mode = properties.get("delivery_mode")
    return {1: "transient", 2: "persistent"}.get(mode, "unset") if isinstance(mode, int) else "unset"


def mode_text(message: Message) -> str:
    return f"delivery_mode={message.properties.get('delivery_mode')} ({mode_name(message.properties)})"


_OPERATIONS: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b,
    "upper": lambda s: s.upper(),
    "reverse": lambda s: s[::-1],
}


def _call_text(request: dict[str, Any]) -> str:
    return f"{request['op']}({', '.join(map(repr, request['args']))})"


class Demo:
    """The three messaging scenarios and an acknowledgement example, narrated on stdout.

    Names start with a fresh ``demo.<id>.`` prefix so repeated runs on a durable broker never collide;
    :meth:`cleanup` deletes what the run declared. Every wait is bounded by :data:`WAIT` seconds.
    """

    def __init__(self, connection: Connection, url: str) -> None:
        self.connection = connection
        self.url = url
        self.prefix = f"demo.{uuid.uuid4().hex[:8]}."
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def name(self, short: str) -> str:
        return self.prefix + short

    def short(self, name: str) -> str:
        return name.removeprefix(self.prefix)

    def exchange(self, short: str, type: str) -> Exchange:
        exchange = Exchange(self.name(short), type)(self.connection.default_channel)
        exchange.declare()
        self.exchanges.append(exchange.name)
        return exchange

    def queue(self, short: str, exchange: Exchange | None = None, routing_key: str = "") -> Queue:
        queue = Queue(self.name(short), exchange, routing_key)(self.connection.default_channel)
        queue.declare()
        self.queues.append(queue.name)
        return queue

    def drain_queue(self, queue: Queue) -> list[Message]:
        """Every message ready in ``queue`` (fetched with basic.get and acked)."""
        messages = []
        while (message := queue.get()) is not None:
            message.ack()
            messages.append(message)
        return messages

    def run(self) -> None:
        print(f"kelp demo on {self.connection.as_uri()}; exchange and queue names below omit '{self.prefix}'")
        self.request_reply()
        self.broadcast()
        self.publish_subscribe()
        self.acknowledgements()

    def cleanup(self) -> None:
        channel = self.connection.default_channel
        for queue in self.queues:
            channel.queue_delete(queue)
        for exchange in self.exchanges:
            channel.exchange_delete(exchange)
        print(f"\ncleaned up: deleted {len(self.queues)} queues and {len(self.exchanges)} exchanges")

    # 1. request/reply -----------------------------------------------------------------------------

    def request_reply(self) -> None:
        print("\n1. request/reply (direct exchange, reply_to + correlation_id)")
        rpc = self.exchange("rpc", "direct")
        requests = self.queue("rpc.requests", rpc, "rpc")
        reply_queue = Queue("", exclusive=True, durable=False)(self.connection.default_channel)
        reply_queue.declare()
        print(f"   exchange 'rpc' (direct) routes key 'rpc' to queue {self.short(requests.name)!r}")
        print(f"   client's reply queue: {reply_queue.name} (exclusive, named by the broker)")
        calls: list[dict[str, Any]] = [
            {"op": "add", "args": [2, 3]},
            {"op": "upper", "args": ["kelp"]},
            {"op": "reverse", "args": ["abc"]},
        ]
        client = Producer(self.connection, rpc, auto_declare=False)
        for number, call in enumerate(calls, 1):
            client.publish(
                call,
                routing_key="rpc",
                reply_to=reply_queue.name,
                correlation_id=f"req-{number}",
                delivery_mode="persistent",
            )
            print(
                f"   client -> req-{number}  {_call_text(call):<16} (persistent)  to exchange 'rpc' key 'rpc'"
            )

        with Connection(self.url) as server_connection:
            server = Consumer(server_connection, [requests], auto_declare=False, prefetch_count=len(calls))
            pending: list[Message] = []
            server.on_message = pending.append
            server.consume()
            _drain_until(server_connection, lambda: len(pending) >= len(calls))
            replier = Producer(server_connection, auto_declare=False)
            for message in reversed(pending):  # out of order on purpose: the client matches by id
                call = message.decode()
                result = _OPERATIONS[call["op"]](*call["args"])
                replier.publish(
                    {"result": result},
                    routing_key=message.properties["reply_to"],
                    correlation_id=message.properties["correlation_id"],
                    delivery_mode="transient",
                )
                message.ack()
                print(
                    f"   server <- {message.properties['correlation_id']}  {_call_text(call):<16} "
                    f"({mode_name(message.properties)})  replies {result!r} to reply_to (transient)"
                )
            server.cancel()
        print("   (the server took all three requests, then answered them in reverse order)")

        replies: dict[str, Message] = {}
        receiver = Consumer(self.connection, [reply_queue], auto_declare=False)
        receiver.on_message = lambda message: replies.__setitem__(
            message.properties["correlation_id"], message
        )
        receiver.consume()
        _drain_until(self.connection, lambda: len(replies) >= len(calls))
        receiver.cancel()
        for number, call in enumerate(calls, 1):
            reply = replies[f"req-{number}"]
            reply.ack()
            print(
                f"   client <- req-{number}  {_call_text(call):<16} = {reply.decode()['result']!r:<8}"
                f"{mode_text(reply)}"
            )
        print(f"   replies arrived as {', '.join(replies)}; matched to requests by correlation_id")

    # 2. broadcast ---------------------------------------------------------------------------------

    def broadcast(self) -> None:
        print("\n2. broadcast (fanout)")
        news = self.exchange("news", "fanout")
        subscribers = [self.queue(f"news.{letter}", news) for letter in "abc"]
        Producer(self.connection, news, auto_declare=False).publish(
            "maintenance at 02:00", delivery_mode="transient"
        )
        print(f"   sent 'maintenance at 02:00' to fanout {self.short(news.name)!r} (transient)")
        for queue in subscribers:
            for message in self.drain_queue(queue):
                print(f"   {self.short(queue.name):<8} got {message.decode()!r}  {mode_text(message)}")
        void = self.exchange("void", "fanout")
        returned: list[str] = []
        Producer(
            self.connection, void, auto_declare=False, on_return=lambda *a: returned.append(a[1])
        ).publish("anyone?", mandatory=True)
        outcome = "routed nowhere (returned)" if returned else "routed somewhere (unexpected!)"
        print(
            f"   sent 'anyone?' to fanout {self.short(void.name)!r} with no bindings (mandatory): {outcome}"
        )

    # 3. publish/subscribe -------------------------------------------------------------------------

    def publish_subscribe(self) -> None:
        print("\n3. publish/subscribe (topic: '*' is one word, '#' zero or more)")
        market = self.exchange("market", "topic")
        patterns = ["stock.*.nyse", "stock.#", "#.error"]
        subscribers = [self.queue(f"sub.{i}", market, pattern) for i, pattern in enumerate(patterns, 1)]
        keys = [
            "stock.ibm.nyse",
            "stock.sap.xetra",
            "stock",
            "stock.ibm.error",
            "app.db.error",
            "weather.today",
        ]
        producer = Producer(self.connection, market, auto_declare=False)
        for i, key in enumerate(keys):
            producer.publish(key, routing_key=key, delivery_mode="persistent" if i % 2 == 0 else "transient")
        got: dict[tuple[str, str], int | None] = {}
        for pattern, queue in zip(patterns, subscribers):
            for message in self.drain_queue(queue):
                got[(message.delivery_info["routing_key"], pattern)] = message.properties.get("delivery_mode")
        print(f"   {'routing key':<16} {'sent as':<11} " + "  ".join(f"{p:<12}" for p in patterns).rstrip())
        for i, key in enumerate(keys):
            cells = ["-" if (key, p) not in got else f"got ({got[(key, p)]})" for p in patterns]
            hits = sum((key, p) in got for p in patterns)
            note = (
                "  <- routed nowhere"
                if not hits
                else ("  <- '#' matches zero words" if key == "stock" and (key, "stock.#") in got else "")
            )
            sent = "persistent" if i % 2 == 0 else "transient"
            print(f"   {key:<16} {sent:<11} " + "  ".join(f"{c:<12}" for c in cells).rstrip() + note)
        print("   (got (n): delivery_mode received, 2 persistent, 1 transient; -: not routed there)")

    # 4. acknowledgements --------------------------------------------------------------------------

    def acknowledgements(self) -> None:
        print("\n4. acknowledgements (ack, reject with requeue, redelivery)")
        jobs = self.queue("jobs")
        producer = Producer(self.connection, auto_declare=False)
        producer.publish("job-1", routing_key=jobs.name)
        message = _receive_one(self.connection, jobs)
        self.report(message, "reject(requeue=True): back to the queue")
        message.reject(requeue=True)
        message = _receive_one(self.connection, jobs)
        self.report(message, "ack: done, removed from the queue")
        message.ack()
        producer.publish("job-2", routing_key=jobs.name)
        with Connection(self.url) as worker:
            message = _receive_one(worker, jobs)
            self.report(message, "not acked; this worker's connection closes")
        message = _receive_one(self.connection, jobs)
        self.report(message, "ack (by another connection)")
        message.ack()
        (_, ready, _) = jobs.queue_declare(passive=True)
        print(f"   {self.short(jobs.name)} now holds {ready} ready messages")

    def report(self, message: Message, action: str) -> None:
        print(f"   {message.decode()}  redelivered={message.redelivered!s:<5}  -> {action}")


def _drain_until(connection: Connection, done: Callable[[], bool], timeout: float = WAIT) -> None:
    """Drain events until ``done()``; raise CommandError after ``timeout`` seconds without it."""
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            connection.drain_events(timeout=remaining)
        except TimeoutError:
            raise OperationalError(
                f"the demo waited {timeout:g}s for a message that did not arrive"
            ) from None


def _receive_one(connection: Connection, queue: Queue) -> Message:
    """One message from ``queue`` through a consumer that is cancelled before the message is settled."""
    received: list[Message] = []
    consumer = Consumer(connection, [queue], auto_declare=False, prefetch_count=1, on_message=received.append)
    consumer.consume()
    try:
        _drain_until(connection, lambda: bool(received))
    finally:
        consumer.cancel()
    return received[0]
