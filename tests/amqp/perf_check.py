"""Micro-benchmark of the hot paths (not a test): ``python tests/amqp/perf_check.py``.

Prints microseconds per basic.publish encode (method + header + body frames, 256-byte body, a few
properties) and per basic.deliver decode (the same three frames fed to a Connection and turned into a
Deliver event).
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amqp_kit import content, open_channel, open_connection

from kelp.amqp import BasicProperties

BODY = b"x" * 256
PROPS = BasicProperties(
    content_type="application/json", content_encoding="utf-8", delivery_mode=2, headers={"x-retry": 1}
)


def main() -> None:
    conn = open_connection()
    channel = open_channel(conn)
    conn.confirm_select(channel)

    def publish() -> None:
        conn.basic_publish(channel, "amq.topic", "orders.created.eu", BODY, PROPS)

    deliver = content(
        channel, "basic.deliver", ("ctag-1", 42, False, "amq.topic", "orders.created.eu"), BODY, PROPS
    )

    def receive() -> None:
        conn.receive_data(deliver)
        conn.next_event()

    number = 100_000
    for label, fn in (("publish encode", publish), ("deliver decode", receive)):
        # CPU time as well as wall time: on a shared machine wall time also counts time spent descheduled.
        wall = min(timeit.repeat(fn, number=number, repeat=5))
        cpu = min(timeit.Timer(fn, timer=time.process_time).repeat(number=number, repeat=5))
        print(f"{label}: {wall / number * 1e6:.2f} us/op wall, {cpu / number * 1e6:.2f} us/op cpu")


if __name__ == "__main__":
    main()
