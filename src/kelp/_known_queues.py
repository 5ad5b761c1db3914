"""For ``kelp.kombu``: the queues that its connections of this process consume from, per broker, and the
last answer to a declaration of each, so that declaring one again (Celery's client declares its reply
queue before every task) needs no broker round trip. The queue exists while it is consumed: its deletion
would cancel the consumer, which forgets it here."""

from __future__ import annotations

import threading
from typing import Any

from kelp._envelope import QueueInfo

__all__ = ["KNOWN_QUEUES", "KnownQueues"]


class KnownQueues:
    """The queues that kelp.kombu connections of this process to one broker consume from, and the last
    answer to a declaration of each, so that declaring one again needs no broker round trip."""

    def __init__(self) -> None:
        # Connections of several threads (Celery's threads pool) share one table.
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[tuple[Any, ...], QueueInfo]] = {}
        self._consumers: dict[tuple[int, int, str], str] = {}  # (connection, channel, tag) -> queue
        self._readers: dict[str, int] = {}  # queue -> how many consumers

    def lookup(self, queue: str, shape: tuple[Any, ...]) -> QueueInfo | None:
        with self._lock:
            known = self._answers.get(queue)
            return known[1] if known is not None and known[0] == shape and queue in self._readers else None

    def declared(self, queue: str, shape: tuple[Any, ...], info: QueueInfo) -> None:
        with self._lock:
            if queue in self._readers:  # kept only while consumed, so the table stays small
                self._answers[queue] = (shape, info)

    def deleted(self, queue: str) -> None:
        with self._lock:
            self._answers.pop(queue, None)

    def consuming(self, connection: object, channel_id: int, tag: str, queue: str) -> None:
        with self._lock:
            self._consumers[(id(connection), channel_id, tag)] = queue
            self._readers[queue] = self._readers.get(queue, 0) + 1

    def cancelled(self, connection: object, channel_id: int, tag: str) -> None:
        with self._lock:
            queue = self._consumers.pop((id(connection), channel_id, tag), None)
            if queue is None:
                return
            self._readers[queue] -= 1
            if not self._readers[queue]:
                del self._readers[queue]
                self._answers.pop(queue, None)

    def forget(self, connection: object) -> None:
        """The connection is gone or new: its consumers no longer vouch for their queues."""
        with self._lock:
            keys = [key for key in self._consumers if key[0] == id(connection)]
        for channel_key in keys:
            self.cancelled(connection, channel_key[1], channel_key[2])


# Per (process, broker URL): what its kelp.kombu connections know of the broker's queues.
KNOWN_QUEUES: dict[tuple[int, str], KnownQueues] = {}
