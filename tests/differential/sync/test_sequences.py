# Generated from tests/differential/aio/test_sequences.py by scripts/unasync.py; do not edit.
"""Hypothesis-generated programs of broker operations, run under Kombu on RabbitMQ (the sync twin) and under
kelp on both faces: every step's outcome (messages got, counts, errors) must be the same.

Every step runs on one channel: RabbitMQ applies a channel's publishes, acks and requeues to a queue in the
order they were sent, before that channel's next get or purge of the queue, so no step needs to wait; only
counts are read until two reads agree.

The world is small on purpose: two queues (one with priorities), a direct and a topic exchange, a few
routing keys; both queues exist, bound, when a program starts. A step that names a deleted queue is skipped in
both runs alike, so that a program never closes its channel with an error and later steps still mean
something.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..harness import KOMBU, Names, observe, plain
from .helpers import KELP, attempt, drain_until, sleep

QUEUES = (0, 1)
EXCHANGES = ("direct", "topic")
KEYS = ("a", "a.b", "b")

queue_ix = st.sampled_from(QUEUES)
patterns = st.sampled_from(("a", "a.*", "#", "b"))
publish = st.tuples(
    st.just("publish"),
    st.sampled_from(("", *EXCHANGES)),
    st.sampled_from(KEYS),
    st.integers(0, 9),
    st.sampled_from((None, 60)),
)
STEPS = {
    "publish": publish,
    "get": st.tuples(st.just("get"), queue_ix),
    "ack": st.tuples(st.just("ack"), st.booleans()),
    "reject": st.tuples(st.just("reject"), st.booleans(), st.booleans()),
    "requeue all": st.tuples(st.just("requeue all"), st.booleans()),
    "recover": st.tuples(st.just("recover")),
    "consume": st.tuples(st.just("consume"), queue_ix, st.integers(1, 3)),
    "declare": st.tuples(st.just("declare"), queue_ix),
    "bind": st.tuples(st.just("bind"), queue_ix, st.sampled_from(EXCHANGES), patterns),
    "unbind": st.tuples(st.just("unbind"), queue_ix, st.sampled_from(EXCHANGES), patterns),
    "purge": st.tuples(st.just("purge"), queue_ix),
    "count": st.tuples(st.just("count"), queue_ix),
    "delete": st.tuples(st.just("delete"), queue_ix),
}
# Publishing, getting and settling are drawn more often than the rest: they make the interesting states.
WEIGHTS = {"publish": 3, "get": 5, "ack": 2, "reject": 2, "requeue all": 2}
step = st.sampled_from([kind for kind in STEPS for _ in range(WEIGHTS.get(kind, 1))]).flatmap(
    STEPS.__getitem__
)
# A few publishes first, so that the steps after them have messages to work on.
programs = st.builds(
    lambda first, rest: [*first, *rest],
    st.lists(publish, min_size=2, max_size=8),
    st.lists(step, min_size=8, max_size=25),
)


def execute(lib: Any, url: str, program: list[tuple[Any, ...]]) -> list[Any]:
    names = Names()
    queue_names = [names("q0"), names("q1")]
    exchange_names = {"direct": names("direct"), "topic": names("topic")}
    outcomes: list[Any] = []
    try:
        with lib.Connection(url) as conn:
            channel = conn.default_channel
            exchanges = {
                kind: lib.Exchange(name, kind, durable=False) for kind, name in exchange_names.items()
            }
            for exchange in exchanges.values():
                exchange(channel).declare()
            queues = [
                lib.Queue(queue_names[0], max_priority=5, durable=False),
                lib.Queue(queue_names[1], durable=False),
            ]
            for queue in queues:
                queue(channel).declare()
            # Starting bindings, so that most publishes reach a queue: q0 takes "a" (direct) and "a.*"
            # (topic), q1 takes "b" (direct) and every topic key.
            for ix, kind, key in (
                (0, "direct", "a"),
                (0, "topic", "a.*"),
                (1, "direct", "b"),
                (1, "topic", "#"),
            ):
                channel.queue_bind(queue_names[ix], exchange_names[kind], key)
            declared: set[int] = {0, 1}  # both exist at the start; "delete" and "declare" change that
            held: list[tuple[int, Any]] = []  # (queue, message) got and not settled, oldest first
            producer = lib.Producer(channel)
            serial = 0
            for op, *args in program:
                if op == "declare":
                    queues[args[0]](channel).declare()
                    declared.add(args[0])
                    outcome: Any = "declared"
                elif (
                    op in ("bind", "unbind", "get", "consume", "purge", "count", "delete")
                    and args[0] not in declared
                ):
                    outcome = "skipped"
                elif op in ("bind", "unbind"):
                    method = getattr(channel, f"queue_{op}")
                    outcome = attempt(partial(method, queue_names[args[0]], exchange_names[args[1]], args[2]))
                    outcome = outcome if outcome is None or hasattr(outcome, "name") else None
                elif op == "publish":
                    exchange, key, priority, ttl = args
                    kwargs = (
                        {"priority": priority} if ttl is None else {"priority": priority, "expiration": ttl}
                    )
                    producer.publish(
                        {"n": serial},
                        exchange=exchange_names.get(exchange, ""),
                        routing_key=_key(key, queue_names) if exchange == "" else key,
                        **kwargs,
                    )
                    serial += 1
                    outcome = "published"
                elif op == "get":
                    message = queues[args[0]](channel).get()
                    if message is not None:
                        held.append((args[0], message))
                    outcome = observe(message)
                elif op in ("ack", "reject"):
                    if not held:
                        outcome = "nothing held"
                    else:
                        # args[0]: settle the newest held message rather than the oldest.
                        _, message = held.pop(-1 if args[0] else 0)
                        outcome = attempt(
                            message.ack if op == "ack" else partial(message.reject, requeue=args[1])
                        )
                elif op == "requeue all":
                    # Every held message back, newest first when args[0] (as a consumer's shutdown might).
                    for _, message in reversed(held) if args[0] else list(held):
                        message.requeue()
                    outcome = len(held)
                    held = []
                elif op == "consume":
                    # A consumer with a prefetch window of args[1] takes what the window allows, then is
                    # cancelled; what it got stays unacked, held like a get's messages.
                    got = consume_some(lib, conn, queues[args[0]](channel), args[1])
                    held.extend((args[0], message) for message in got)
                    outcome = [observe(message) for message in got]
                elif op == "recover":
                    # basic.recover(requeue=True): every unacked message of the channel back to its queue.
                    channel.basic_recover(requeue=True)
                    outcome = len(held)
                    held = []
                elif op == "purge":
                    outcome = queues[args[0]](channel).purge()
                elif op == "count":
                    outcome = settled_count(queues[args[0]](channel))
                else:  # delete
                    outcome = queues[args[0]](channel).delete()
                    declared.discard(args[0])
                    held = [(ix, m) for ix, m in held if ix != args[0]]
                outcomes.append((op, outcome))
    finally:
        _cleanup(lib, url, queue_names, list(exchange_names.values()))
    return plain(outcomes, names)


def consume_some(lib: Any, conn: Any, queue: Any, window: int) -> list[Any]:
    """Consume from ``queue`` with a prefetch window of ``window`` until the window is full or the queue
    has nothing more ready, then cancel; the messages stay unacked."""
    want = min(settled_count(queue), window)
    got: list[Any] = []
    consumer = lib.Consumer(
        queue.channel, [queue], callbacks=[lambda body, message: got.append(message)], auto_declare=False
    )
    consumer.qos(prefetch_count=window)
    consumer.consume()
    drain_until(conn, lambda: len(got) >= want)
    consumer.cancel()
    return got


def settled_count(queue: Any) -> int:
    """The queue's ready count once two reads in a row agree (RabbitMQ applies requeues asynchronously;
    the program does not know what the count should be)."""
    last = None
    for _ in range(50):
        found = (queue.queue_declare(passive=True)).message_count
        if found == last:
            break
        last = found
        sleep(0.02)
    return int(found)


def _key(key: str, queue_names: list[str]) -> str:
    # On the default exchange a routing key names a queue: "a" is q0, "b" is q1, "a.b" nothing.
    return {"a": queue_names[0], "b": queue_names[1]}.get(key, key)


def _cleanup(lib: Any, url: str, queue_names: list[str], exchange_names: list[str]) -> None:
    try:
        with lib.Connection(url) as conn:
            channel = conn.channel()
            for name in queue_names:
                channel.queue_delete(name)
            for name in exchange_names:
                channel.exchange_delete(name)
    except Exception:  # cleanup must never fail a test
        pass


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=programs)
def test_programs_behave_as_on_rabbitmq(reference_url, subject_url, program):
    # The reference runs this module's sync twin under Kombu.
    twin = importlib.import_module(__name__.replace(".aio.", ".sync."))
    assert execute(KELP, subject_url, program) == twin.execute(KOMBU, reference_url, program)
