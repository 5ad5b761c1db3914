"""Exchanges, queues and bindings: the routing graph, as plain values.

These classes hold declarations only; they do no I/O themselves. Binding one to a channel
(``queue(channel)`` or ``queue.bind(channel)``) gives a copy whose operations (``declare``, ``purge``,
``get``...) forward to that channel. The same classes serve both faces: on a ``kelp`` channel the operations
return results, on a ``kelp.aio`` channel they return awaitables (``await queue(channel).declare()``).
"""

from kelp._bindable import DELIVERY_MODES as DELIVERY_MODES
from kelp._bindable import PERSISTENT_DELIVERY_MODE, TRANSIENT_DELIVERY_MODE, maybe_delivery_mode
from kelp._exchange import Exchange, binding
from kelp._queue import Queue

__all__ = [
    "PERSISTENT_DELIVERY_MODE",
    "TRANSIENT_DELIVERY_MODE",
    "Exchange",
    "Queue",
    "binding",
    "maybe_delivery_mode",
]
