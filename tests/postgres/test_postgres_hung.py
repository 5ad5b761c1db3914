"""postgresql:// when the server stops answering. The server's processes are stopped (SIGSTOP): their
kernel still acknowledges every packet, as a frozen machine's does, so TCP notices nothing. A call that
waits on the server - a consumer's claim inside ``drain_events(timeout=...)``, a publisher's ``flush`` -
fails with OperationalError within about SUSPECT_AFTER + PROBE_TIMEOUT seconds instead of waiting for
ever, and nothing is lost: once the server answers again the connection reconnects and the messages are
there. Needs a cluster the test may stop (KELP_TEST_POSTGRES_DIR, as the restart tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kelp
from kelp._broker.postgres import _watchdog
from kelp.exceptions import OperationalError

BOUND = 30.0  # far above SUSPECT_AFTER + PROBE_TIMEOUT + 1 below: a hang, not a slow answer


class Server:
    """The test cluster's processes, to stop and let go."""

    def __init__(self, directory: str) -> None:
        self.postmaster = int(Path(directory, "data", "postmaster.pid").read_text().split()[0])
        self.stopped: list[int] = []

    def stop(self) -> None:
        for pid in [self.postmaster, *_children(self.postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)

    def resume(self) -> None:
        stopped, self.stopped = self.stopped, []
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.fixture
def server(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    directory = os.environ.get("KELP_TEST_POSTGRES_DIR")
    if not directory:
        pytest.skip("KELP_TEST_POSTGRES_DIR is not set: no cluster this test may stop")
    monkeypatch.setattr(_watchdog, "SUSPECT_AFTER", 1.0)
    monkeypatch.setattr(_watchdog, "PROBE_TIMEOUT", 2)
    found = Server(directory)
    try:
        yield found
    finally:
        found.resume()


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    found.append(int(entry))
    return found


def _bounded(work: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run ``work`` in a thread; what it raised and how long it took (BOUND if it did not end)."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the test
            raised[0] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    return raised[0], (BOUND if thread.is_alive() else time.monotonic() - started)


def test_a_consumer_waiting_on_a_hung_server_gets_an_error_and_its_message_comes_back(
    pg_url: str, server: Server
) -> None:
    queue = kelp.Queue("work")
    with kelp.Connection(pg_url) as conn:
        queue(conn.channel()).declare()
        conn.Producer().publish("kept", routing_key="work")
    got: list[Any] = []
    conn = kelp.Connection(pg_url)
    try:
        with conn.Consumer(queue, callbacks=[lambda body, message: got.append(body)]):
            conn.drain_events(timeout=10)  # claimed, not acked
            assert got == ["kept"]
            server.stop()
            raised, took = _bounded(lambda: conn.drain_events(timeout=2))
            assert took < BOUND, "drain_events(timeout=2) waited on the hung server for ever"
            assert isinstance(raised, OperationalError), raised
            assert not conn.connected
    finally:
        server.resume()
        conn.close()
    # The hung connection's session ended: its unacked message goes back to the queue, redelivered.
    with kelp.Connection(pg_url) as conn:
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            message = queue(conn.channel()).get()
            time.sleep(0.1)
        assert message is not None
        assert message.payload == "kept"
        assert message.delivery_info["redelivered"]


def test_a_flush_waiting_on_a_hung_server_gets_an_error_and_loses_nothing(
    pg_url: str, server: Server
) -> None:
    queue = kelp.Queue("work")
    with kelp.Connection(pg_url) as conn:
        queue(conn.channel()).declare()
    conn = kelp.Connection(pg_url)
    try:
        producer = conn.Producer()
        producer.publish("first", routing_key="work")
        conn.transport.flush(None)
        server.stop()
        producer.publish("second", routing_key="work")  # written to the socket, its result not read
        raised, took = _bounded(lambda: conn.transport.flush(None))
        assert took < BOUND, "flush() waited on the hung server for ever"
        assert isinstance(raised, OperationalError), raised
        unconfirmed = [envelope.body for envelope in conn.transport.unconfirmed()]
    finally:
        server.resume()
        conn.close()
    with kelp.Connection(pg_url) as conn:
        count = queue(conn.channel()).queue_declare(passive=True).message_count
    # "second" is stored (the server read it before it stopped) or still unconfirmed, to publish again.
    assert count == 2 or (count == 1 and len(unconfirmed) == 1), (count, unconfirmed)


def test_connecting_to_a_hung_server_gives_up_after_the_connect_timeout(pg_url: str, server: Server) -> None:
    # A fresh process has no session open yet: its first one waits on the hung server.
    code = (
        "import sys, time, kelp\n"
        "from kelp.exceptions import OperationalError\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    kelp.Connection(sys.argv[1], connect_timeout=2).connect()\n"
        "except OperationalError as exc:\n"
        "    print('refused', round(time.monotonic() - started, 1), type(exc).__name__)\n"
        "else:\n"
        "    print('connected')\n"
    )
    server.stop()
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, pg_url], capture_output=True, text=True, timeout=BOUND
        )
    except subprocess.TimeoutExpired:
        pytest.fail("connecting with connect_timeout=2 waited on the hung server for ever")
    finally:
        server.resume()
    words = done.stdout.split()
    assert words[:1] == ["refused"], done.stdout + done.stderr
    assert float(words[1]) < 10, done.stdout
