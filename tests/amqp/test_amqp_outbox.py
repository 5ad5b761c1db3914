"""The sans-IO publisher-confirm outbox: settling, refusals, waiters, closed channels, publish order."""

from __future__ import annotations

from kelp.amqp import Outbox, Waiter


def test_acks_settle_and_free_the_bounds() -> None:
    outbox: Outbox[str] = Outbox()
    for seq in range(1, 6):
        outbox.add(1, seq, f"m{seq}", 10, None)
    assert (outbox.count, outbox.bytes) == (5, 50)
    outbox.settle(1, range(1, 4), True)  # basic.ack multiple up to 3
    assert (outbox.count, outbox.bytes) == (2, 20)
    assert outbox.messages() == ["m4", "m5"]
    assert outbox.refused == []


def test_nacks_of_unwaited_publishes_are_kept_until_taken() -> None:
    outbox: Outbox[str] = Outbox()
    for seq in range(1, 4):
        outbox.add(1, seq, f"m{seq}", 1, None)
    outbox.settle(1, (2,), False)
    outbox.settle(1, (1, 3), True)
    assert outbox.take_refused() == (["m2"], [])
    assert outbox.take_refused() == ([], [])  # reported once
    assert outbox.count == 0


def test_a_waiter_counts_its_own_confirms_and_nacks() -> None:
    outbox: Outbox[str] = Outbox()
    waiter: Waiter[str] = Waiter()
    outbox.add(1, 1, "other", 1, None)
    outbox.add(1, 2, "a", 1, waiter)
    outbox.add(1, 3, "b", 1, waiter)
    assert not waiter.done
    outbox.settle(1, range(1, 3), True)
    assert waiter.remaining == 1
    outbox.settle(1, (3,), False)
    assert waiter.done
    assert waiter.nacked == ["b"]
    assert outbox.refused == []  # the waiter reports its own


def test_a_closed_channel_fails_waiters_and_refuses_the_rest() -> None:
    outbox: Outbox[str] = Outbox()
    waiter: Waiter[str] = Waiter()
    outbox.add(1, 1, "a", 1, None)
    outbox.add(1, 2, "b", 1, waiter)
    outbox.add(2, 1, "c", 1, None)
    error = RuntimeError("404")
    assert outbox.close_channel(1, error) == 2
    assert waiter.error is error
    assert outbox.take_refused() == (["a"], [error])
    assert outbox.messages() == ["c"]
    assert outbox.close_channel(1, error) == 0
    outbox.add(1, 1, "d", 1, None)  # the reopened channel counts from 1 again
    assert outbox.messages() == ["c", "d"]


def test_lost_connection_keeps_messages_in_publish_order_across_channels() -> None:
    outbox: Outbox[str] = Outbox()
    waiter: Waiter[str] = Waiter()
    outbox.add(2, 1, "first", 1, None)
    outbox.add(1, 1, "second", 1, waiter)
    outbox.add(2, 2, "third", 1, None)
    outbox.fail_waiters(ConnectionError("gone"))
    assert waiter.done
    assert outbox.messages() == ["first", "second", "third"]


def test_forget_takes_back_the_messages_of_a_publish_that_raised() -> None:
    outbox: Outbox[str] = Outbox()
    for seq in range(1, 4):
        outbox.add(1, seq, f"m{seq}", 5, None)
    assert outbox.forget(1, [2, 3, 9]) == ["m2", "m3"]
    assert (outbox.count, outbox.bytes) == (1, 5)
    outbox.settle(1, (2,), False)  # a late answer for a forgotten one is ignored
    assert outbox.refused == []
