"""Another process changes the broker between this process's operations: this process's long-lived
connections must see the change as RabbitMQ's clients do. A broker that kelp runs in the publishing or
consuming process (sqlite, postgres) keeps per-process state - a snapshot of the topology, claim floors,
consumers - that a change made elsewhere can leave stale; a single process cannot find such defects,
since all its connections share one store. See ``kit`` for process B, ``conftest`` for the fixtures.

Here: what another process changes in the topology this process publishes into.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import kelp
from kelp.exceptions import MessageNacked, NotFound, PreconditionFailed

from .kit import (
    MODES,
    WAIT,
    contents,
    declare_queue,
    error_of,
    exchange_declare,
    exists,
    named,
    op,
    queue_declare,
    raised_by,
    refusals,
    run_b,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

# --- routing: B changes the topology A publishes into --------------------------------------------------


def test_a_queue_and_a_binding_declared_by_another_process_get_the_next_publish(url: str, names: Any) -> None:
    # The publisher routed to no queue on its snapshot of the topology: that snapshot must not be trusted
    # for the next publish (sqlite and postgres dropped it as unroutable, for ever on a publish-only process).
    fan, bound, late = names("fan"), names("bound"), names("late")
    with kelp.Connection(url) as conn:
        conn.channel().exchange_declare(fan, "fanout", durable=True, auto_delete=False)
        producer = conn.Producer()
        producer.publish("before", exchange=fan)
        producer.publish("before", routing_key=late)
        producer.flush()
        run_b(
            url,
            queue_declare(bound),
            op("queue_bind", queue=bound, exchange=fan, routing_key=""),
            queue_declare(late),
        )
        for mode in ("persistent", "transient"):  # sqlite: a transient publish routes on its own path
            producer.publish(mode, exchange=fan, delivery_mode=mode)
            producer.publish(mode, routing_key=late, delivery_mode=mode)
        producer.flush()
        for queue in (bound, late):
            got = contents(conn, queue)
            assert got == ["persistent", "transient"], f"{queue} got {got} of what was published after it"


def test_a_binding_removed_by_another_process_gets_no_more_messages(url: str, names: Any) -> None:
    fan, kept, unbound = names("fan"), names("kept"), names("unbound")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(fan, "fanout", durable=True, auto_delete=False)
        for queue in (kept, unbound):
            declare_queue(conn, queue)
            channel.queue_bind(queue, fan, "")
        producer = conn.Producer()
        producer.publish("before", exchange=fan)
        producer.flush()
        run_b(url, op("queue_unbind", queue=unbound, exchange=fan, routing_key=""))
        for mode in MODES:
            producer.publish(mode, exchange=fan, delivery_mode=mode)
        producer.flush()
        assert contents(conn, kept) == ["before", *MODES]
        assert contents(conn, unbound) == ["before"]


def test_a_mandatory_publish_is_returned_or_routed_as_another_process_changed_the_bindings(
    url: str, names: Any
) -> None:
    exchange, queue = names("x"), names("q")
    returned: list[Any] = []
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)
        declare_queue(conn, queue)
        channel.queue_bind(queue, exchange, "k")
        producer = conn.Producer(
            on_return=lambda exc, exchange, key, message: returned.append(message.payload)
        )
        producer.publish("bound", exchange=exchange, routing_key="k", mandatory=True)
        producer.flush()
        run_b(url, op("queue_unbind", queue=queue, exchange=exchange, routing_key="k"))
        producer.publish("unbound", exchange=exchange, routing_key="k", mandatory=True)
        producer.flush()
        run_b(url, op("queue_bind", queue=queue, exchange=exchange, routing_key="k"))
        producer.publish("bound again", exchange=exchange, routing_key="k", mandatory=True)
        producer.flush()
        assert returned == ["unbound"]
        assert contents(conn, queue) == ["bound", "bound again"]


def test_an_auto_delete_exchange_goes_when_another_process_removes_its_last_binding(
    url: str, names: Any
) -> None:
    exchange, queue = names("x"), names("q")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "fanout", durable=True, auto_delete=True)
        declare_queue(conn, queue)
        channel.queue_bind(queue, exchange, "")
        producer = conn.Producer()
        producer.publish("before", exchange=exchange)
        producer.flush()
        run_b(url, op("queue_unbind", queue=queue, exchange=exchange, routing_key=""))
        errors = [
            e
            for e in (
                raised_by(lambda: producer.publish("after", exchange=exchange)),
                raised_by(producer.flush),
            )
            if e is not None
        ]
        assert len(errors) == 1, errors
        assert isinstance(errors[0], (NotFound, MessageNacked))
        assert error_of(lambda: conn.channel().exchange_declare(exchange, "fanout", passive=True)) is NotFound
        assert contents(conn, queue) == ["before"]


def test_a_queue_another_process_deleted_is_not_declared_again_by_a_remembered_declaration(
    url: str, names: Any
) -> None:
    """Producer.publish(declare=[...]) declares an entity once per connection (Kombu's maybe_declare does
    the same on RabbitMQ): a queue another process deleted since is not declared again, and the message is
    dropped as RabbitMQ drops an unroutable one - on every transport alike."""
    name = names("q")
    with kelp.Connection(url) as conn:
        queue = kelp.Queue(name, durable=True, auto_delete=False)
        producer = conn.Producer()
        producer.publish("one", routing_key=name, declare=[queue])
        producer.flush()
        run_b(url, op("queue_delete", queue=name))
        producer.publish("two", routing_key=name, declare=[queue])
        producer.flush()
        assert not exists(conn, name)


def test_a_queue_declared_again_with_a_length_limit_keeps_the_newest(url: str, names: Any) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("old", routing_key=queue)
        producer.flush()
        assert run_b(url, op("queue_delete", queue=queue), queue_declare(queue, {"x-max-length": 1})) == [
            1,
            0,
        ]
        for mode in MODES:
            producer.publish(mode, routing_key=queue, delivery_mode=mode)
        producer.flush()
        assert contents(conn, queue) == [MODES[-1]]


def test_a_queue_declared_again_to_reject_publishes_refuses_the_overflow(url: str, names: Any) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("old", routing_key=queue)
        producer.flush()
        run_b(
            url,
            op("queue_delete", queue=queue),
            queue_declare(queue, {"x-max-length": 1, "x-overflow": "reject-publish"}),
        )
        refused = refusals(
            ("first", lambda: producer.publish("first", routing_key=queue)),
            ("second", lambda: producer.publish("second", routing_key=queue)),
            ("third", lambda: producer.publish("third", routing_key=queue, delivery_mode="transient")),
            (None, producer.flush),
        )
        assert refused == ["second", "third"]
        assert contents(conn, queue) == ["first"]


def test_a_batch_into_a_queue_declared_again_to_reject_publishes_names_the_refused(
    url: str, names: Any
) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("old", routing_key=queue)
        producer.flush()
        run_b(
            url,
            op("queue_delete", queue=queue),
            queue_declare(queue, {"x-max-length": 2, "x-overflow": "reject-publish"}),
        )
        batch = [producer.prepare(f"m{i}", routing_key=queue) for i in range(4)]
        assert refusals((None, lambda: producer.publish_many(batch)), (None, producer.flush)) == ["m2", "m3"]
        # and once this process knows the new shape
        batch = [producer.prepare(f"n{i}", routing_key=queue) for i in range(2)]
        assert refusals((None, lambda: producer.publish_many(batch)), (None, producer.flush)) == ["n0", "n1"]
        assert contents(conn, queue) == ["m0", "m1"]


def test_a_queue_declared_again_with_a_ttl_and_dead_letter_exchange_dead_letters_expiries(
    url: str, names: Any
) -> None:
    queue, dlx, dead = names("q"), names("dlx"), names("dead")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("old", routing_key=queue)
        producer.flush()
        run_b(
            url,
            exchange_declare(dlx, "fanout"),
            queue_declare(dead),
            op("queue_bind", queue=dead, exchange=dlx, routing_key=""),
            op("queue_delete", queue=queue),
            queue_declare(queue, {"x-message-ttl": 1, "x-dead-letter-exchange": dlx}),
        )
        for mode in MODES:
            producer.publish(mode, routing_key=queue, delivery_mode=mode)
        producer.flush()
        got = wait_for(conn, dead, 2)
        assert sorted(m.payload for m in got) == sorted(MODES)
        assert [m.headers["x-death"][0]["reason"] for m in got] == ["expired", "expired"]
        assert contents(conn, queue) == []


def test_a_queue_declared_again_with_priorities_delivers_the_highest_first(url: str, names: Any) -> None:
    queue = names("q")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("old", routing_key=queue)
        producer.flush()
        assert contents(conn, queue) == ["old"]
        run_b(url, op("queue_delete", queue=queue), queue_declare(queue, {"x-max-priority": 9}))
        for priority in (1, 5, 9, 0):
            producer.publish(f"p{priority}", routing_key=queue, priority=priority)
        producer.flush()
        assert contents(conn, queue) == ["p9", "p5", "p1", "p0"]


def test_an_exchange_declared_again_with_another_type_routes_by_it(url: str, names: Any) -> None:
    exchange, first, second = names("x"), names("first"), names("second")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "fanout", durable=True, auto_delete=False)
        for queue, key in ((first, "one"), (second, "two")):
            declare_queue(conn, queue)
            channel.queue_bind(queue, exchange, key)
        producer = conn.Producer()
        producer.publish("fanned", exchange=exchange, routing_key="one")
        producer.flush()
        run_b(
            url,
            op("exchange_delete", exchange=exchange),
            exchange_declare(exchange, "direct"),
            op("queue_bind", queue=first, exchange=exchange, routing_key="one"),
            op("queue_bind", queue=second, exchange=exchange, routing_key="two"),
        )
        for mode in MODES:
            producer.publish(mode, exchange=exchange, routing_key="one", delivery_mode=mode)
        producer.flush()
        assert contents(conn, first) == ["fanned", *MODES]
        assert contents(conn, second) == ["fanned"]


def test_declaring_what_another_process_declared_again_differently_is_refused(url: str, names: Any) -> None:
    queue, exchange = names("q"), names("x")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue)
        conn.channel().exchange_declare(exchange, "fanout", durable=True, auto_delete=False)
        run_b(
            url,
            op("queue_delete", queue=queue),
            queue_declare(queue, {"x-max-length": 5}),
            op("exchange_delete", exchange=exchange),
            exchange_declare(exchange, "direct"),
        )
        # this process's snapshot still has the old shapes: the broker's current ones decide
        assert error_of(lambda: declare_queue(conn, queue)) is PreconditionFailed
        assert error_of(lambda: declare_queue(conn, queue, **{"x-max-length": 5})) is None
        old = lambda: conn.channel().exchange_declare(exchange, "fanout", durable=True, auto_delete=False)  # noqa: E731
        assert error_of(old) is PreconditionFailed
        new = lambda: conn.channel().exchange_declare(exchange, "direct", durable=True, auto_delete=False)  # noqa: E731
        assert error_of(new) is None


def test_a_publish_to_an_exchange_another_process_deleted_fails(url: str, names: Any) -> None:
    exchange, queue = names("x"), names("q")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "fanout", durable=True, auto_delete=False)
        declare_queue(conn, queue)
        channel.queue_bind(queue, exchange, "")
        producer = conn.Producer()
        producer.publish("before", exchange=exchange)
        producer.flush()
        run_b(url, op("exchange_delete", exchange=exchange))
        # RabbitMQ closes the channel with 404 NOT_FOUND: kelp's amqp raises MessageNacked naming the
        # message from the flush; redis and postgres too, then NotFound from the next publish at once;
        # sqlite NotFound from the publish. Either way each publish is refused once, never dropped silently.
        for body in ("after", "again"):
            publish = raised_by(lambda: producer.publish(body, exchange=exchange))  # noqa: B023 - called here
            errors = [e for e in (publish, raised_by(producer.flush)) if e is not None]
            assert len(errors) == 1, errors
            refused = errors[0]
            assert isinstance(refused, NotFound) or (
                isinstance(refused, MessageNacked) and named(refused) == [body]
            ), refused
        assert contents(conn, queue) == ["before"]


def test_an_exchange_binding_made_by_another_process_routes_the_next_publish(url: str, names: Any) -> None:
    source, destination, queue = names("src"), names("dst"), names("q")
    with kelp.Connection(url) as conn:
        channel = conn.channel()
        channel.exchange_declare(source, "topic", durable=True, auto_delete=False)
        channel.exchange_declare(destination, "fanout", durable=True, auto_delete=False)
        declare_queue(conn, queue)
        channel.queue_bind(queue, destination, "")
        producer = conn.Producer()
        producer.publish("unrouted", exchange=source, routing_key="a.b")
        producer.flush()
        run_b(url, op("exchange_bind", destination=destination, source=source, routing_key="a.#"))
        for mode in MODES:
            producer.publish(mode, exchange=source, routing_key="a.b", delivery_mode=mode)
        producer.flush()
        assert contents(conn, queue) == list(MODES)


def test_an_alternate_exchange_set_by_another_process_takes_the_unroutable(url: str, names: Any) -> None:
    exchange, alternate, queue = names("x"), names("ae"), names("q")
    with kelp.Connection(url) as conn:
        conn.channel().exchange_declare(exchange, "direct", durable=True, auto_delete=False)
        producer = conn.Producer()
        producer.publish("unrouted", exchange=exchange, routing_key="nowhere")
        producer.flush()
        run_b(
            url,
            exchange_declare(alternate, "fanout"),
            queue_declare(queue),
            op("queue_bind", queue=queue, exchange=alternate, routing_key=""),
            op("exchange_delete", exchange=exchange),
            exchange_declare(exchange, "direct", {"alternate-exchange": alternate}),
        )
        for mode in MODES:
            producer.publish(mode, exchange=exchange, routing_key="nowhere", delivery_mode=mode)
        producer.flush()
        assert contents(conn, queue) == list(MODES)


def test_an_alternate_exchange_another_process_declared_late_takes_the_unroutable(
    url: str, names: Any
) -> None:
    exchange, alternate, queue = names("x"), names("ae"), names("q")
    with kelp.Connection(url) as conn:
        # names an alternate exchange that does not exist yet: RabbitMQ drops the unroutable meanwhile
        conn.channel().exchange_declare(
            exchange, "direct", durable=True, auto_delete=False, arguments={"alternate-exchange": alternate}
        )
        producer = conn.Producer()
        producer.publish("dropped", exchange=exchange, routing_key="nowhere")
        producer.flush()
        run_b(
            url,
            exchange_declare(alternate, "fanout"),
            queue_declare(queue),
            op("queue_bind", queue=queue, exchange=alternate, routing_key=""),
        )
        for mode in MODES:
            producer.publish(mode, exchange=exchange, routing_key="nowhere", delivery_mode=mode)
        producer.flush()
        assert contents(conn, queue) == list(MODES)


def test_a_queue_another_process_declared_with_expires_goes_unused(url: str, names: Any) -> None:
    queue = names("expiring")
    with kelp.Connection(url) as conn:
        conn.Producer().publish("warm", routing_key=names("none"))  # this process has a snapshot
        run_b(url, queue_declare(queue, {"x-expires": 300}))
        # each look renews the lease on RabbitMQ: look less often than it lasts
        deadline = time.monotonic() + WAIT
        while exists(conn, queue) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not exists(conn, queue)


def test_a_headers_binding_another_process_made_and_removed_routes_accordingly(url: str, names: Any) -> None:
    exchange, queue = names("hx"), names("q")
    rule = {"x-match": "all", "kind": "order"}
    with kelp.Connection(url) as conn:
        conn.channel().exchange_declare(exchange, "headers", durable=True, auto_delete=False)
        declare_queue(conn, queue)
        producer = conn.Producer()
        producer.publish("unbound", exchange=exchange, headers={"kind": "order"})
        producer.flush()
        run_b(url, op("queue_bind", queue=queue, exchange=exchange, routing_key="", arguments=rule))
        for mode in MODES:
            producer.publish(mode, exchange=exchange, headers={"kind": "order"}, delivery_mode=mode)
        producer.publish("other", exchange=exchange, headers={"kind": "refund"})
        producer.flush()
        run_b(url, op("queue_unbind", queue=queue, exchange=exchange, routing_key="", arguments=rule))
        producer.publish(
            "unbound again", exchange=exchange, headers={"kind": "order"}, delivery_mode="transient"
        )
        producer.flush()
        assert contents(conn, queue) == list(MODES)


def test_an_exchange_only_another_process_declared_routes(url: str, names: Any) -> None:
    exchange, queue = names("x"), names("q")
    with kelp.Connection(url) as conn:
        producer = conn.Producer()
        producer.publish("warm", routing_key=names("none"))  # this process has routed once
        producer.flush()
        run_b(
            url,
            exchange_declare(exchange, "topic"),
            queue_declare(queue),
            op("queue_bind", queue=queue, exchange=exchange, routing_key="*.b"),
        )
        for mode in MODES:
            producer.publish(mode, exchange=exchange, routing_key="a.b", delivery_mode=mode)
        producer.flush()
        assert contents(conn, queue) == list(MODES)


# --- dead letters through what B declared -----------------------------------------------------------


def test_a_reject_dead_letters_to_an_exchange_another_process_declared(url: str, names: Any) -> None:
    queue, dlx, dead = names("q"), names("dlx"), names("dead")
    with kelp.Connection(url) as conn:
        # The dead-letter exchange does not exist yet: RabbitMQ accepts that (dead letters are dropped)
        declare_queue(conn, queue, **{"x-dead-letter-exchange": dlx})
        producer = conn.Producer()
        for body in ("early", "late"):
            producer.publish(body, routing_key=queue)
        producer.flush()
        taken = kelp.Queue(queue)(conn.channel())
        early = taken.get()
        assert early is not None
        assert early.payload == "early"
        early.reject()  # no dead-letter exchange yet: dropped
        late = taken.get()
        assert late is not None
        assert late.payload == "late"
        run_b(
            url,
            exchange_declare(dlx, "fanout"),
            queue_declare(dead),
            op("queue_bind", queue=dead, exchange=dlx, routing_key=""),
        )
        late.reject()
        got = wait_for(conn, dead, 1)
        assert [(m.payload, m.headers["x-death"][0]["reason"]) for m in got] == [("late", "rejected")]


def test_an_expiry_dead_letters_to_an_exchange_another_process_declared(url: str, names: Any) -> None:
    queue, dlx, dead = names("q"), names("dlx"), names("dead")
    with kelp.Connection(url) as conn:
        declare_queue(conn, queue, **{"x-dead-letter-exchange": dlx})
        producer = conn.Producer()
        # expires once B has declared the dead-letter exchange (B takes well under a second)
        producer.publish("expiring", routing_key=queue, expiration=2.5)
        producer.flush()
        published = time.monotonic()
        run_b(
            url,
            exchange_declare(dlx, "fanout"),
            queue_declare(dead),
            op("queue_bind", queue=dead, exchange=dlx, routing_key=""),
        )
        assert time.monotonic() - published < 2.0, "process B took too long: the message expired first"
        got = wait_for(conn, dead, 1)
        assert [(m.payload, m.headers["x-death"][0]["reason"]) for m in got] == [("expiring", "expired")]
