"""The broker core's channel bookkeeping on its own (no store, no broker): the delivery tags, unacked
deliveries, consumer windows and claim rooms that both the session layer and the redis transport use."""

from __future__ import annotations

import pytest

from kelp._broker.core.channel import MAX_CLAIM, ChannelState
from kelp.exceptions import PreconditionFailed, UsageError


def test_tags_number_deliveries_in_order_and_only_acked_ones_stay_unacked() -> None:
    channel = ChannelState(3)
    consumer = channel.add_consumer("c", "q", no_ack=False)
    assert channel.record(consumer, "q", ["a", "b"], no_ack=False) == 1
    assert channel.record(None, "q", ["g"], no_ack=True) == 3  # a get with no_ack: numbered, not kept
    assert channel.record(None, "q", ["h"], no_ack=False) == 4
    assert sorted(channel.unacked) == [1, 2, 4]
    assert [channel.unacked[t].ref for t in (1, 2, 4)] == ["a", "b", "h"]
    assert channel.unacked[1].queue == "q"
    assert channel.unacked[1].consumer is consumer
    assert channel.unacked[4].consumer is None
    assert consumer.unacked == 2
    assert channel.next_tag == 5


def test_settle_one_multiple_and_all() -> None:
    channel = ChannelState(1)
    consumer = channel.add_consumer("c", "q", no_ack=False)
    channel.record(consumer, "q", list("abcdef"), no_ack=False)
    assert [item.ref for item in channel.settle(2, multiple=False)] == ["b"]
    assert consumer.unacked == 5
    # multiple: every unacked tag up to and including the given one, in delivery order
    assert [item.ref for item in channel.settle(4, multiple=True)] == ["a", "c", "d"]
    assert consumer.unacked == 2
    assert sorted(channel.unacked) == [5, 6]
    # tag 0 with multiple: all of them
    assert [item.ref for item in channel.settle(0, multiple=True)] == ["e", "f"]
    assert consumer.unacked == 0
    assert not channel.unacked


def test_settle_an_unknown_tag_fails_and_takes_nothing() -> None:
    channel = ChannelState(1)
    consumer = channel.add_consumer("c", "q", no_ack=False)
    channel.record(consumer, "q", ["a"], no_ack=False)
    channel.settle(1, multiple=False)
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 1"):
        channel.settle(1, multiple=False)  # already settled
    channel.record(consumer, "q", ["b"], no_ack=False)
    with pytest.raises(PreconditionFailed, match="unknown delivery tag 7"):
        channel.settle(7, multiple=False)
    assert list(channel.unacked) == [2]
    assert consumer.unacked == 1
    # with multiple, tags below every unacked one settle nothing (as RabbitMQ: no error)
    assert channel.settle(1, multiple=True) == []
    assert consumer.unacked == 1


def test_drop_all_gives_back_in_delivery_order_and_frees_every_window() -> None:
    channel = ChannelState(1)
    first = channel.add_consumer("c1", "q1", no_ack=False)
    second = channel.add_consumer("c2", "q2", no_ack=False)
    channel.record(first, "q1", ["a"], no_ack=False)
    channel.record(second, "q2", ["b", "c"], no_ack=False)
    channel.record(None, "q1", ["d"], no_ack=False)
    channel.record(first, "q1", ["e"], no_ack=False)
    channel.settle(3, multiple=False)  # leaves a gap: the order is by tag, not by insertion
    channel.record(second, "q2", ["f"], no_ack=False)
    items = channel.drop_all()
    assert [(item.ref, item.queue) for item in items] == [
        ("a", "q1"),
        ("b", "q2"),
        ("d", "q1"),
        ("e", "q1"),
        ("f", "q2"),
    ]
    assert first.unacked == second.unacked == 0
    assert channel.drop_all() == []
    assert channel.record(first, "q1", ["g"], no_ack=False) == 7  # tags keep counting


def test_consumer_tags_are_checked_and_generated() -> None:
    channel = ChannelState(1)
    assert channel.free_tag("mine") == "mine"
    channel.add_consumer("mine", "q", no_ack=False)
    with pytest.raises(UsageError, match="already in use"):
        channel.free_tag("mine")
    generated = channel.free_tag("")
    assert generated.startswith("amq.ctag-")
    assert generated != channel.free_tag("")


def test_rooms_follow_each_consumer_window_and_qos() -> None:
    channel = ChannelState(1)
    unlimited = channel.add_consumer("u", "q", no_ack=False)
    channel.qos(3, global_=False)
    windowed = channel.add_consumer("w", "q", no_ack=False)
    assert unlimited.prefetch == windowed.prefetch == 3  # a channel-wide qos applies to existing consumers
    channel.qos(0, global_=False)
    channel.qos(3, global_=False)  # back to 3 for both
    channel.record(windowed, "q", ["a", "b"], no_ack=False)
    assert [(c.tag, room) for c, room in channel.rooms()] == [("u", 3), ("w", 1)]
    channel.record(windowed, "q", ["c", "d"], no_ack=False)  # over its window (qos lowered, say)
    assert [(c.tag, room) for c, room in channel.rooms()] == [("u", 3), ("w", 0)]
    channel.qos(0, global_=False)
    assert [(c.tag, room) for c, room in channel.rooms()] == [("u", MAX_CLAIM), ("w", MAX_CLAIM)]
    assert channel.global_room() == MAX_CLAIM


def test_rooms_take_turns_from_start() -> None:
    channel = ChannelState(1)
    for name in "abc":
        channel.add_consumer(name, "q", no_ack=False)
    assert [c.tag for c, _ in channel.rooms()] == ["a", "b", "c"]
    assert [c.tag for c, _ in channel.rooms(1)] == ["b", "c", "a"]
    assert [c.tag for c, _ in channel.rooms(5)] == ["c", "a", "b"]
    assert ChannelState(2).rooms(4) == []


def test_global_window_room() -> None:
    channel = ChannelState(1)
    channel.qos(5, global_=True)
    channel.qos(3, global_=False)
    first = channel.add_consumer("a", "q", no_ack=False)
    channel.add_consumer("b", "q", no_ack=False)
    channel.record(None, "q", ["g"], no_ack=False)  # a get's delivery counts against the global window
    channel.record(first, "q", ["x"], no_ack=False)
    assert channel.global_room() == 3
    # each consumer's own window: the claim limits the channel as a whole to global_room()
    assert [room for _, room in channel.rooms()] == [2, 3]
    channel.record(first, "q", ["y", "z"], no_ack=False)
    assert channel.global_room() == 1
    channel.qos(2, global_=True)  # lowered below what is unacked: no room, never negative
    assert channel.global_room() == 0
    channel.qos(0, global_=True)  # no global window
    assert channel.global_room() == MAX_CLAIM
