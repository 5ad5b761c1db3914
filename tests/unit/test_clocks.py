"""kelp.clocks against Kombu's clocks: the same calls give the same values and the same orderings."""

from __future__ import annotations

import pickle
import threading

import kombu.clocks
import pytest

from kelp.clocks import LamportClock, timetuple

MODULES = [pytest.param(kombu.clocks, id="kombu"), pytest.param(__import__("kelp.clocks").clocks, id="kelp")]


@pytest.mark.parametrize("module", MODULES)
def test_forward_and_adjust(module):
    clock = module.LamportClock()
    assert (clock.value, clock.forward(), clock.forward()) == (0, 1, 2)
    assert clock.adjust(10) == 11
    assert clock.adjust(3) == 12
    assert (str(clock), repr(clock)) == ("12", "<LamportClock: 12>")
    assert module.LamportClock(initial_value=5).forward() == 6


def test_forward_is_atomic_across_threads():
    clock = LamportClock()
    seen: list[int] = []

    def tick() -> None:
        seen.extend(clock.forward() for _ in range(1000))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 4001))


@pytest.mark.parametrize("module", MODULES)
def test_sort_heap_picks_the_lowest_process_id_among_ties(module):
    clock = module.LamportClock()
    assert clock.sort_heap([(1, "b"), (2, "a")]) == (1, "b")
    assert clock.sort_heap([(3, "c", "x"), (3, "a", "y"), (3, "b", "z"), (4, "0")]) == (3, "a", "y")


HEAPS = [
    ((1, 5.0, "b"), (2, 1.0, "a")),  # clocks win over timestamps
    ((2, 1.0, "b"), (2, 1.0, "a")),  # equal clocks: lower id first
    ((None, 1.0, "b"), (2, 2.0, "a")),  # a missing clock: timestamps decide
    ((0, 3.0, "b"), (0, 2.0, "a")),
]


@pytest.mark.parametrize("pair", HEAPS)
def test_timetuple_orders_as_kombu(pair):
    ours = [timetuple(*event) for event in pair]
    theirs = [kombu.clocks.timetuple(*event) for event in pair]
    a, b = ours
    ka, kb = theirs
    assert (a < b, a > b, a <= b, a >= b) == (ka < kb, ka > kb, ka <= kb, ka >= kb)
    assert [tuple(e) for e in sorted(ours)] == [tuple(e) for e in sorted(theirs)]


def test_timetuple_fields_repr_and_pickle():
    event = timetuple(3, 1.5, "host:1", {"k": 1})
    assert (event.clock, event.timestamp, event.id, event.obj) == (3, 1.5, "host:1", {"k": 1})
    assert repr(event) == repr(kombu.clocks.timetuple(3, 1.5, "host:1", {"k": 1}))
    assert pickle.loads(pickle.dumps(event)) == event
    assert type(pickle.loads(pickle.dumps(event))) is timetuple
