"""Numeric connection options (from a URL query, where they are text, or from keyword arguments), checked.

A transport reads each option it supports through these functions, so a malformed or out-of-range value
(``liveness=abc``, ``socket_timeout=-1``, ``frame_max=1``) raises :class:`~kelp.exceptions.InvalidURL`
naming the option, instead of a bare ``ValueError`` or a silently odd connection.
"""

from __future__ import annotations

import math

from kelp.exceptions import InvalidURL

__all__ = ["integer_option", "seconds_option"]


def seconds_option(
    scheme: str, name: str, value: object, *, zero: bool = False, maximum: float = math.inf
) -> float:
    """``value`` as a finite number of seconds, > 0 (or >= 0 with ``zero``), at most ``maximum``."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero) or seconds > maximum:
        bound = ">= 0" if zero else "> 0"
        if maximum < math.inf:
            bound += f" and <= {maximum:g}"
        raise InvalidURL(f"{scheme}:// option {name}={value!r} must be a number of seconds {bound}")
    return seconds


def integer_option(scheme: str, name: str, value: object, low: int, high: int) -> int:
    """``value`` as a whole number from ``low`` to ``high``."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value)
    if number is None or not low <= number <= high:
        raise InvalidURL(f"{scheme}:// option {name}={value!r} must be a whole number from {low} to {high}")
    return number
