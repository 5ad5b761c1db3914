"""Coalesced acks on amqp://: every ack reaches the broker, in call order, and prefetch windows refill."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import kelp
import kelp.aio
from kelp._envelope import Envelope
from kelp.message import Message


def fill(url: str, queue: str, n: int) -> None:
    with kelp.Connection(url) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        ch.publish_batch([Envelope(b"m%d" % i, {}, {"i": i}, "", queue, False) for i in range(n)])


def settled_counts(url: str, queue: str) -> tuple[int, list[int]]:
    """Ready count after a fresh connection (so nothing is unacked), and the ``i`` of what is left."""
    with kelp.Connection(url) as conn:
        ch = conn.channel()
        count = ch.queue_declare(queue, passive=True).message_count
        left = []
        while (message := ch.basic_get(queue, no_ack=True)) is not None:
            left.append(message.headers["i"])
        return count, sorted(left)


def test_acks_issued_inside_a_drain_loop_arrive(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 250)
    got: list[int] = []
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)

        def on_message(message: Message) -> None:
            got.append(message.headers["i"])
            message.ack()

        ch.basic_consume(queue, callback=on_message)
        while len(got) < 250:
            conn.drain_events(timeout=10)
        # the last window's acks went out when drain waited: another connection sees nothing left
        with kelp.Connection(amqp_url) as other:
            assert other.channel().queue_declare(queue, passive=True).message_count == 0
        try:
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        with kelp.Connection(amqp_url) as other:
            declared = other.channel().queue_declare(queue, passive=True)
            assert (declared.message_count, declared.consumer_count) == (0, 1)
    assert sorted(got) == list(range(250))
    assert settled_counts(amqp_url, queue) == (0, [])


def test_an_ack_followed_by_close_is_not_lost(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 3)
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        for _ in range(3):
            message = ch.basic_get(queue)
            assert message is not None
            message.ack()
    assert settled_counts(amqp_url, queue) == (0, [])


def test_an_ack_followed_by_channel_close_is_not_lost(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 2)
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        held = [ch.basic_get(queue) for _ in range(2)]
        for message in held:
            assert message is not None
            message.ack()
        ch.close()
        assert settled_counts(amqp_url, queue) == (0, [])


def test_a_reject_between_acks_keeps_order(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 5)
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        messages = [m for m in (ch.basic_get(queue) for _ in range(5)) if m is not None]
        assert len(messages) == 5
        m0, m1, m2, m3, m4 = messages
        m0.ack()
        m1.ack()
        m2.reject(requeue=True)  # acks of 0 and 1 go first, in the same write
        m3.ack()
        m4.ack()
    assert settled_counts(amqp_url, queue) == (1, [2])


def test_a_held_message_is_not_acked_by_a_multiple_ack(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 20)
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        messages = [ch.basic_get(queue) for _ in range(20)]
        for message in messages[:5] + messages[6:]:  # the sixth is still being processed
            assert message is not None
            message.ack()
        ch.queue_declare(queue, passive=True)  # flushes the acks
    assert settled_counts(amqp_url, queue) == (1, [5])


def test_prefetch_windows_refill(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 1000)
    got = 0
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=10)

        def on_message(message: Message) -> None:
            nonlocal got
            got += 1
            message.ack()

        ch.basic_consume(queue, callback=on_message)
        while got < 1000:
            conn.drain_events(timeout=10)
    assert settled_counts(amqp_url, queue) == (0, [])


def test_aio_acks_in_a_drain_loop_arrive_and_refill(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 300)

    async def main() -> int:
        got = 0
        async with kelp.aio.Connection(amqp_url) as conn:
            ch = await conn.channel()
            await ch.basic_qos(prefetch_count=10)

            async def on_message(message: kelp.aio.Message) -> None:
                nonlocal got
                got += 1
                await message.ack()

            await ch.basic_consume(queue, callback=on_message)
            while got < 300:
                await conn.drain_events(timeout=10)
            held = await ch.basic_get(queue)
            assert held is None
        return got

    assert asyncio.run(main()) == 300
    assert settled_counts(amqp_url, queue) == (0, [])


def test_acks_of_a_prefetch_window_share_a_write(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("q")
    fill(amqp_url, queue, 400)
    got = 0
    with kelp.Connection(amqp_url) as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)

        def on_message(message: Message) -> None:
            nonlocal got
            got += 1
            message.ack()

        ch.basic_consume(queue, callback=on_message)
        transport = conn.transport
        assert transport is not None
        driver = transport._driver  # type: ignore[attr-defined]
        send = driver.send
        writes = 0

        def counting_send(produce: Callable[[], bytes], drain: bool = True) -> None:
            nonlocal writes
            writes += 1
            send(produce, drain)

        driver.send = counting_send
        while got < 400:
            conn.drain_events(timeout=10)
        assert writes <= 40, writes  # at most one per 50 acks or per drain that waited, not one per ack
    assert settled_counts(amqp_url, queue) == (0, [])
