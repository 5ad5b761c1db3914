"""A kelp process for the multi-process tests: ``python worker.py MODE URL QUEUE [ARGS...]``.

Modes (each prints one line per event, flushed, so the test can follow it):

* ``produce URL QUEUE START COUNT [confirm|transient]`` - publish ``{"n": START..START+COUNT-1}``,
  persistent (``transient``: delivery mode 1), to a durable queue; prints ``done`` and exits after a clean
  close (``confirm``: prints ``done`` then waits to be killed).
* ``die URL QUEUE COUNT DELIVERY_MODE [aio]`` - publish ``{"n": 0..COUNT-1}`` with default options (with
  ``kelp.aio``: a sequential loop, then as many again concurrently), then kill itself (SIGKILL) the moment
  the last ``publish()`` returned: no close, no flush, no exit handler.
* ``consume URL QUEUE IDLE`` - consume with prefetch 10, ack each; prints ``ready`` once consuming, then
  ``<n> <redelivered>`` per message; exits after IDLE seconds without a message.
* ``hold URL QUEUE PREFETCH`` - consume without acking; prints ``<n> <redelivered>`` per message, then
  waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from kelp import Connection, Queue


def main(argv: list[str]) -> None:
    mode, url, name = argv[:3]
    queue = Queue(name, durable=True, auto_delete=False)
    if mode == "die" and argv[5:] == ["aio"]:
        asyncio.run(_die_aio(url, name, int(argv[3]), int(argv[4])))
    if mode == "die":
        count, delivery_mode = int(argv[3]), int(argv[4])
        conn = Connection(url)
        producer = conn.Producer()
        producer.declare()
        for n in range(count):
            producer.publish({"n": n}, routing_key=name, declare=[queue], delivery_mode=delivery_mode)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "produce":
        start, count = int(argv[3]), int(argv[4])
        confirm = len(argv) > 5 and argv[5] == "confirm"
        delivery_mode = 1 if len(argv) > 5 and argv[5] == "transient" else 2
        with Connection(url, transport_options={"confirm_publish": confirm}) as conn:
            producer = conn.Producer()
            for n in range(start, start + count):
                producer.publish({"n": n}, routing_key=name, declare=[queue], delivery_mode=delivery_mode)
            print("done", flush=True)
            if confirm:
                time.sleep(3600)
        return
    with Connection(url) as conn:
        if mode == "consume":
            idle = float(argv[3])

            def on_message(body: dict[str, int], message: object) -> None:
                print(body["n"], int(message.redelivered), flush=True)  # type: ignore[attr-defined]
                message.ack()  # type: ignore[attr-defined]

            with conn.Consumer([queue], callbacks=[on_message], prefetch_count=10):
                print("ready", flush=True)
                last = time.monotonic()
                while time.monotonic() - last < idle:
                    try:
                        conn.drain_events(timeout=0.2)
                        last = time.monotonic()
                    except TimeoutError:
                        pass
            print("exit", flush=True)
        elif mode == "hold":
            prefetch = int(argv[3])

            def hold(body: dict[str, int], message: object) -> None:
                print(body["n"], int(message.redelivered), flush=True)  # type: ignore[attr-defined]

            with conn.Consumer([queue], callbacks=[hold], prefetch_count=prefetch):
                while True:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        pass
        else:
            raise SystemExit(f"unknown mode {mode!r}")


async def _die_aio(url: str, name: str, count: int, delivery_mode: int) -> None:
    from kelp import aio

    queue = aio.Queue(name, durable=True, auto_delete=False)
    conn = aio.Connection(url)
    producer = conn.Producer()
    await producer.declare()
    for n in range(count):
        await producer.publish({"n": n}, routing_key=name, declare=[queue], delivery_mode=delivery_mode)
    await asyncio.gather(
        *(
            producer.publish({"n": n}, routing_key=name, delivery_mode=delivery_mode)
            for n in range(count, 2 * count)
        )
    )
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
