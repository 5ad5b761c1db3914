"""Logical clocks: order events between processes without trusting their wall clocks.

:class:`LamportClock` is a counter each process keeps: it moves forward for every event the process sends
(:meth:`LamportClock.forward`, whose value travels with the message) and jumps past the value carried by
every message it receives (:meth:`LamportClock.adjust`). :class:`timetuple` orders events by that clock,
falling back to wall-clock timestamps when an event has no clock value. Names and behaviour are Kombu's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["LamportClock", "timetuple"]


class timetuple(tuple[Any, ...]):
    """``(clock, timestamp, id, obj)``: one event, ordered by its logical clock.

    Two events compare by ``clock`` when both have one (a tie goes to the lower ``id``), otherwise by
    ``timestamp``; so a heap of timetuples pops events in causal order. ``obj`` rides along untouched.
    """

    __slots__ = ()

    def __new__(cls, clock: int | None, timestamp: float, id: str, obj: Any = None) -> timetuple:
        return super().__new__(cls, (clock, timestamp, id, obj))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        clock, timestamp, id_, obj = self
        return f"_lamport(clock={clock}, timestamp={timestamp}, id={id_} {obj!r})"

    @property
    def clock(self) -> int | None:
        return self[0]  # type: ignore[no-any-return]

    @property
    def timestamp(self) -> float:
        return self[1]  # type: ignore[no-any-return]

    @property
    def id(self) -> str:
        return self[2]  # type: ignore[no-any-return]

    @property
    def obj(self) -> Any:
        return self[3]

    def __lt__(self, other: tuple[Any, ...]) -> bool:
        if len(other) < 3:
            return NotImplemented
        mine, theirs = self[0], other[0]
        if mine and theirs:
            return bool(self[2] < other[2]) if mine == theirs else bool(mine < theirs)
        return bool(self[1] < other[1])

    def __gt__(self, other: tuple[Any, ...]) -> bool:
        return timetuple.__lt__(_as_timetuple(other), self)

    def __le__(self, other: tuple[Any, ...]) -> bool:
        return not timetuple.__lt__(_as_timetuple(other), self)

    def __ge__(self, other: tuple[Any, ...]) -> bool:
        return not self < other


def _as_timetuple(value: tuple[Any, ...]) -> timetuple:
    return value if isinstance(value, timetuple) else timetuple(*value)


class LamportClock:
    """A Lamport logical clock, safe to share between threads.

    Call :meth:`forward` when sending (put the value it returns in the message), :meth:`adjust` with the
    value found in a received message. ``value`` is the current reading.
    """

    def __init__(
        self,
        initial_value: int = 0,
        Lock: Callable[[], AbstractContextManager[Any]] = threading.Lock,
    ) -> None:
        self.value = initial_value
        self.mutex = Lock()

    def adjust(self, other: int) -> int:
        """Move past ``other`` (a clock value received from another process); return the new value."""
        with self.mutex:
            self.value = max(self.value, other) + 1
            return self.value

    def forward(self) -> int:
        """Advance by one for an event this process sends; return the new value to send with it."""
        with self.mutex:
            self.value += 1
            return self.value

    def sort_heap(self, h: Sequence[Sequence[Any]]) -> Sequence[Any]:
        """The winner of a sorted heap of ``(clock, process_id, ...)`` events.

        The first event, unless several share its clock value: then the one among them with the lowest
        process id, so that every process picks the same winner.
        """
        first_clock = h[0][0]
        if len(h) < 2 or h[1][0] != first_clock:
            return h[0]
        tied = [event for event in h if event[0] == first_clock]
        return min(tied, key=lambda event: event[1])

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return f"<LamportClock: {self.value}>"
