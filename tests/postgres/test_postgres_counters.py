"""postgresql:// traffic counters (QueueStats published / delivered / acked): exact in the counting
process, added to the table in batches (another process reads them within FLUSH_DELAY), dropped with the
queue, and never a per-publish UPDATE."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest

import kelp
from kelp._broker.postgres._counters import FLUSH_DELAY


def _row(conn: kelp.Connection, name: str) -> tuple[int | None, int | None, int | None]:
    for row in conn.transport.queue_stats():
        if row[0] == name:
            return row.published, row.delivered, row.acked
    raise AssertionError(f"no queue {name}")


def test_counters_follow_publishes_deliveries_acks_and_dead_letters(pg_url: str) -> None:
    exchange = kelp.Exchange("orders", "direct")
    work = kelp.Queue("work", exchange, "new", dead_letter_exchange="dlx")
    dead = kelp.Queue("dead", kelp.Exchange("dlx", "direct"), "new")
    with kelp.Connection(pg_url) as conn:
        producer = conn.Producer(exchange=exchange)
        for n in range(5):
            producer.publish({"n": n}, routing_key="new", declare=[work, dead])
        assert _row(conn, "work") == (5, 0, 0)
        bound = work(conn.channel())
        first, second, third = bound.get(), bound.get(), bound.get(no_ack=True)
        assert first is not None
        assert second is not None
        assert third is not None
        first.ack()
        second.reject()  # dead-lettered: published into "dead", not acked
        assert _row(conn, "work") == (5, 3, 1)
        assert _row(conn, "dead") == (1, 0, 0)
        producer.publish({"n": 9}, routing_key="new", countdown=0.2)
        assert _row(conn, "work") == (5, 3, 1)  # held: not in the queue yet
        time.sleep(0.3)
        got: list[object] = []

        def on_message(body: object, message: kelp.Message) -> None:
            got.append(body)
            message.ack()

        with conn.Consumer(work, callbacks=[on_message]):
            while len(got) < 3:
                conn.drain_events(timeout=5)
        assert _row(conn, "work") == (6, 6, 4)  # the delayed one counts when it came due


def test_another_process_reads_the_counts_within_the_flush_delay(pg_url: str) -> None:
    publish = (
        "import sys, kelp\n"
        "with kelp.Connection(sys.argv[1]) as conn:\n"
        "    producer = conn.Producer()\n"
        "    for n in range(300):\n"
        "        producer.publish(n, routing_key='work')\n"
        "    print('done', flush=True)\n"
        "    sys.stdin.read()\n"  # stays connected: its counts must not wait for its close
    )
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        child = subprocess.Popen(
            [sys.executable, "-c", publish, pg_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "done\n"
            time.sleep(FLUSH_DELAY + 0.3)
            assert _row(conn, "work") == (300, 0, 0)
        finally:
            child.communicate("", timeout=30)


def test_publishes_are_counted_in_a_few_updates(pg_url: str) -> None:
    """2,000 publishes over about a second write the counter row a handful of times, not 2,000."""
    schema = pg_url.rsplit("schema=", 1)[1]
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        producer = conn.Producer()
        producer.publish(0, routing_key="work")
        time.sleep(FLUSH_DELAY + 0.2)
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as db:

            def writes() -> int:
                db.execute("SELECT pg_stat_clear_snapshot()")
                row = db.execute(
                    "SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables "
                    "WHERE schemaname = %s AND relname = 'counters'",
                    (schema,),
                ).fetchone()
                return int(row[0]) if row else 0

            before = writes()
            began = time.monotonic()
            for n in range(2000):
                producer.publish(n, routing_key="work")
            elapsed = time.monotonic() - began
            assert _row(conn, "work")[0] == 2001
            time.sleep(1.0)  # the statistics collector reports with a delay
            assert writes() - before <= elapsed / FLUSH_DELAY + 3


def test_a_queue_declared_again_starts_from_zero(pg_url: str) -> None:
    with kelp.Connection(pg_url) as conn:
        queue = kelp.Queue("work")
        queue(conn.channel()).declare()
        conn.Producer().publish(1, routing_key="work")
        assert _row(conn, "work") == (1, 0, 0)
        queue(conn.channel()).delete()
        queue(conn.channel()).declare()
        assert _row(conn, "work") == (0, 0, 0)


@pytest.mark.parametrize("kind", ["published"])
def test_counters_survive_a_new_connection(pg_url: str, kind: str) -> None:
    with kelp.Connection(pg_url) as conn:
        kelp.Queue("work")(conn.channel()).declare()
        conn.Producer().publish(1, routing_key="work")
    with kelp.Connection(pg_url) as conn:
        assert getattr(conn.transport.queue_stats()[0], kind) == 1
