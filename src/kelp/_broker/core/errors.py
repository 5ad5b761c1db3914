"""One table per store from its native failures to kelp's exceptions, applied at the store boundary.

A store lists its rules once - ``(native exception type, predicate or None, factory)`` - and wraps each
call into its engine with :meth:`ErrorMap.boundary` (or calls :meth:`ErrorMap.translate` where it retries
first). The first rule whose type and predicate match builds the kelp exception, given the native one and
a context string (the database path, the server address). kelp exceptions pass unchanged; a native
failure no rule names is a bug and propagates as it is, so it is seen, never disguised.

Which kelp exception for what (what the session and users rely on):

* ``OperationalError`` - the engine is unreachable, busy beyond its timeout, or closed: reconnecting or
  retrying may help (``Connection.ensure`` retries it).
* ``ResourceError`` - out of space or another limit: buffered messages wait; the caller should act.
* ``InconsistencyError`` - the store's data is damaged or not kelp's.
* ``NotFound``, ``PreconditionFailed``, ``ResourceLocked``, ``AccessRefused`` - a refused operation, with
  RabbitMQ's meaning; stores raise these themselves from their own checks rather than mapping them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kelp.exceptions import KelpError

__all__ = ["ErrorMap", "Rule"]

#: ``(native exception type, predicate on it or None, factory of the kelp exception from it and a context)``
Rule = tuple[
    type[BaseException], Callable[[BaseException], bool] | None, Callable[[BaseException, str], KelpError]
]


class ErrorMap:
    """An ordered table of :data:`Rule`: the first that matches wins."""

    __slots__ = ("rules",)

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules

    def translate(self, exc: BaseException, context: str = "") -> KelpError | None:
        """The kelp exception for ``exc`` (itself when it is one), or None when no rule names it."""
        if isinstance(exc, KelpError):
            return exc
        for kind, predicate, factory in self.rules:
            if isinstance(exc, kind) and (predicate is None or predicate(exc)):
                return factory(exc, context)
        return None

    @contextmanager
    def boundary(self, context: str = "") -> Iterator[None]:
        """Raise the mapped kelp exception (from None: the native one is in the message) for a native
        failure inside the block."""
        try:
            yield
        except KelpError:
            raise
        except Exception as exc:
            mapped = self.translate(exc, context)
            if mapped is None:
                raise
            raise mapped from None
