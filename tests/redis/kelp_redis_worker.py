"""A consumer process for the crash tests: ``python kelp_redis_worker.py URL QUEUE PREFETCH ACK``.

Consumes QUEUE with a prefetch window of PREFETCH, acks the first ACK messages it receives, then holds the
rest unacked; prints ``acked <bodies>`` and ``holding <bodies>`` (JSON lists) once its window is full, and
sleeps until it is killed. Exits with status 3 if the window does not fill within 20 seconds.
"""

from __future__ import annotations

import json
import sys
import time

from kelp import Connection, Queue


def main() -> int:
    url, queue, prefetch, ack = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    received: list[object] = []
    messages: list[object] = []

    def on_message(body: object, message: object) -> None:
        received.append(body)
        messages.append(message)

    with Connection(url) as conn:
        consumer = conn.Consumer([Queue(queue)], callbacks=[on_message], prefetch_count=prefetch)
        with consumer:
            deadline = time.monotonic() + 20
            acked = 0
            while len(received) < ack + prefetch:
                if time.monotonic() > deadline:
                    return 3
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
                while acked < min(ack, len(messages)):
                    messages[acked].ack()  # type: ignore[attr-defined]
                    acked += 1
            conn.transport.flush()  # type: ignore[union-attr]
            print("acked", json.dumps(received[:ack]), flush=True)
            print("holding", json.dumps(received[ack:]), flush=True)
            time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
