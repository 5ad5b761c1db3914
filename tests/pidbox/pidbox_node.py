"""A mailbox node in a process of its own, for tests/pidbox: ``python pidbox_node.py URL NAMESPACE HOSTNAME``.

Prints ``ready`` once it listens, answers ``ping``/``whoami``/``add``, and exits after the ``shutdown``
command or when its standard input closes (the test process died), so no node outlives its test.
"""

from __future__ import annotations

import os
import sys
import threading

import kelp
from kelp.pidbox import Mailbox


def main(url: str, namespace: str, hostname: str) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with kelp.Connection(url) as conn:
        node = Mailbox(namespace)(conn).Node(hostname, state={"total": 0})

        @node.handler
        def whoami(state):
            return {"hostname": hostname, "pid": os.getpid()}

        @node.handler
        def add(state, value):
            state["total"] += value
            return state["total"]

        @node.handler
        def shutdown(state):
            stop.set()
            return "bye"

        node.listen()
        print("ready", flush=True)
        while not stop.is_set():
            try:
                conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass


if __name__ == "__main__":
    main(*sys.argv[1:4])
