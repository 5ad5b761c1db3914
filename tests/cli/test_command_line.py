"""The ``kelp`` command line, run in-process through ``main()`` and as ``python -m kelp``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kelp import Connection, cli


@pytest.fixture
def url() -> str:
    """A memory broker of its own: process-wide, so successive main() calls in this test share it."""
    return f"memory://cli-{uuid.uuid4().hex[:8]}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def queue_stats(url: str) -> dict[str, tuple[int, int, int]]:
    with Connection(url) as connection:
        assert connection.transport is not None
        stats = connection.transport.queue_stats()
    return {name: (ready, unacked, consumers) for name, ready, unacked, consumers in stats}


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kelp: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


# --- demo -------------------------------------------------------------------------------------------------


def check_demo_output(out: str) -> None:
    lines = out.splitlines()
    assert len(lines) < 60
    for title in (
        "1. request/reply (direct exchange, reply_to + correlation_id)",
        "2. broadcast (fanout)",
        "3. publish/subscribe (topic",
        "4. acknowledgements",
    ):
        assert any(line.startswith(title) for line in lines), title

    # request/reply: every reply matched its request, and came back transient.
    replies = {line.split()[2]: line for line in lines if line.strip().startswith("client <-")}
    assert set(replies) == {"req-1", "req-2", "req-3"}
    assert "= 5" in replies["req-1"]
    assert "= 'KELP'" in replies["req-2"]
    assert "= 'cba'" in replies["req-3"]
    assert all("delivery_mode=1 (transient)" in line for line in replies.values())
    assert sum("(persistent)  replies" in line for line in lines) == 3

    # broadcast: the three bound queues got the one message; the unbound exchange routed nowhere.
    got = [line.split()[0] for line in lines if "got 'maintenance at 02:00'" in line]
    assert got == ["news.a", "news.b", "news.c"]
    assert any("'void'" in line and "routed nowhere" in line for line in lines)

    # publish/subscribe: which subscriber got which routing key.
    header = next(line for line in lines if line.strip().startswith("routing key"))
    assert header.split()[-3:] == ["stock.*.nyse", "stock.#", "#.error"]
    rows = {}
    for line in lines:
        words = line.split()
        if words and words[0] in {"stock.ibm.nyse", "stock.sap.xetra", "stock", "stock.ibm.error",
                                  "app.db.error", "weather.today"}:  # fmt: skip
            rows[words[0]] = line
    expected = {
        "stock.ibm.nyse": ["got (2)", "got (2)", "-"],
        "stock.sap.xetra": ["-", "got (1)", "-"],
        "stock": ["-", "got (2)", "-"],
        "stock.ibm.error": ["-", "got (1)", "got (1)"],
        "app.db.error": ["-", "-", "got (2)"],
        "weather.today": ["-", "-", "-"],
    }
    assert set(rows) == set(expected)
    for key, cells in expected.items():
        row = rows[key].split("<-")[0].split()[2:]
        assert " ".join(row) == " ".join(cells), rows[key]
    assert "'#' matches zero words" in rows["stock"]
    assert "routed nowhere" in rows["weather.today"]

    # acknowledgements: reject+requeue and a closed connection both redeliver.
    acks = [line.split()[:2] for line in lines if line.strip().startswith("job-")]
    assert acks == [
        ["job-1", "redelivered=False"],
        ["job-1", "redelivered=True"],
        ["job-2", "redelivered=False"],
        ["job-2", "redelivered=True"],
    ]
    assert "jobs now holds 0 ready messages" in out
    assert "cleaned up: deleted 8 queues and 4 exchanges" in out


def test_demo_as_a_module_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "KELP_URL"}
    env["KELP_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "kelp", "demo"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"kelp demo on sqlite:///{tmp_path}/kelp.db")
    assert (tmp_path / "kelp.db").exists()
    check_demo_output(result.stdout)


def test_damaged_database_is_one_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    status, out, err = run(capsys, "--url", f"sqlite:///{damaged}", "queues")
    assert status == 1
    assert out == ""
    assert_one_error_line(err, "not a usable kelp database")
    assert damaged.read_bytes() == b"this is not a database" * 100


def test_demo_in_process_leaves_nothing_behind(capsys: pytest.CaptureFixture[str], url: str) -> None:
    status, out, err = run(capsys, "--url", url, "demo")
    assert (status, err) == (0, "")
    check_demo_output(out)
    assert queue_stats(url) == {}


def test_demo_runs_twice_on_one_broker(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run(capsys, "--url", url, "demo")[0] == 0
    assert run(capsys, "--url", url, "demo")[0] == 0


# --- publish / consume ------------------------------------------------------------------------------------


def consume_records(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> list[dict[str, Any]]:
    status, out, err = run(capsys, "--url", url, "consume", "inbox", "--timeout", "0.5", *extra)
    assert (status, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def test_publish_then_consume_in_one_process(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run(capsys, "--url", url, "declare", "queue", "inbox")[0] == 0
    status, out, err = run(
        capsys, "--url", url, "publish", "hello", "--routing-key", "inbox",
        "--header", "x-source=cli", "--header", "n=1", "--transient",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert "routing key 'inbox'" in out
    run(capsys, "--url", url, "publish", '{"a": [1, 2]}', "--routing-key", "inbox", "--serializer", "json")

    first, second = consume_records(capsys, url, "--count", "2")
    assert first["body"] == "hello"
    assert first["headers"] == {"x-source": "cli", "n": "1"}
    assert first["properties"]["delivery_mode"] == 1
    assert first["properties"]["content_type"] == "text/plain"
    assert first["delivery_info"]["routing_key"] == "inbox"
    assert first["delivery_info"]["redelivered"] is False
    assert second["body"] == {"a": [1, 2]}
    assert second["properties"]["delivery_mode"] == 2
    assert queue_stats(url)["inbox"] == (0, 0, 0)  # acked


def test_consume_does_not_decode_refused_content(
    capsys: pytest.CaptureFixture[str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "--url", url, "declare", "queue", "inbox")
    monkeypatch.setattr(sys, "stdin", io.StringIO("not really a pickle"))
    publish = ["publish", "-", "--routing-key", "inbox", "--content-type", "application/x-python-serialize"]
    assert run(capsys, "--url", url, *publish)[0] == 0
    (record,) = consume_records(capsys, url)
    assert record["body"] == "not really a pickle"
    assert record["properties"]["content_type"] == "application/x-python-serialize"


def test_consume_marks_undecodable_messages_and_acks_them(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    run(capsys, "--url", url, "declare", "queue", "inbox")
    with Connection(url) as connection:
        producer = connection.Producer()
        for compression, body in (("bogus", b"{}"), ("zlib", b"corrupt"), (5, b"{}")):
            producer.publish(
                body,
                routing_key="inbox",
                content_type="application/json",
                headers={"compression": compression},
            )
        # text a foreign AMQP producer sent as bytes that are not UTF-8 arrives with lone surrogates
        producer.publish(b"{}", routing_key="inbox", content_type="\udcffjson", headers={"k\udcfe": 1})
        producer.publish({"good": True}, routing_key="inbox")
    records = consume_records(capsys, url)
    assert [r.get("error", "")[:24] for r in records] == ["cannot decode the body: "] * 3 + ["", ""]
    assert "unknown compression method 'bogus'" in records[0]["error"]
    assert "corrupt zlib body" in records[1]["error"]
    assert "must be a string, got int" in records[2]["error"]
    assert records[1]["body"] == "corrupt"
    assert records[3]["properties"]["content_type"] == "\udcffjson"
    assert records[3]["headers"] == {"k\udcfe": 1}
    assert records[4]["body"] == {"good": True}
    assert queue_stats(url)["inbox"] == (0, 0, 0)  # every one acked


def test_consume_stops_at_count_and_leaves_the_rest(capsys: pytest.CaptureFixture[str], url: str) -> None:
    run(capsys, "--url", url, "declare", "queue", "inbox")
    for body in ("one", "two", "three"):
        run(capsys, "--url", url, "publish", body, "--routing-key", "inbox")
    assert [r["body"] for r in consume_records(capsys, url, "--count", "1", "--no-ack")] == ["one"]
    assert queue_stats(url)["inbox"] == (2, 0, 0)
    assert [r["body"] for r in consume_records(capsys, url)] == ["two", "three"]


def test_consume_timeout_before_count_fails(capsys: pytest.CaptureFixture[str], url: str) -> None:
    run(capsys, "--url", url, "declare", "queue", "inbox")
    run(capsys, "--url", url, "publish", "only", "--routing-key", "inbox")
    status, out, err = run(capsys, "--url", url, "consume", "inbox", "--count", "2", "--timeout", "0.2")
    assert status == 1
    assert json.loads(out)["body"] == "only"
    assert_one_error_line(err, "received 1 of 2")


def test_publish_unroutable_warns(capsys: pytest.CaptureFixture[str], url: str) -> None:
    status, _, err = run(capsys, "--url", url, "publish", "lost", "--routing-key", "nobody")
    assert status == 0
    assert err.startswith("kelp: warning:")
    assert "not routed" in err


# --- declare / inspect / delete ------------------------------------------------------------------------


def test_declare_bind_and_inspect(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert run(capsys, "--url", url, "declare", "exchange", "logs", "--type", "topic")[0] == 0
    status, out, _ = run(
        capsys, "--url", url, "declare", "queue", "errors", "--bind", "logs:#.error", "--bind", "logs:db.*"
    )
    assert status == 0
    assert "queue 'errors' declared" in out
    run(capsys, "--url", url, "publish", "disk full", "--exchange", "logs", "--routing-key", "db.error")

    status, out, _ = run(capsys, "--url", url, "queues")
    assert status == 0
    assert out.splitlines()[0].split() == ["name", "ready", "unacked", "consumers", "delayed"]
    assert ["errors", "1", "0", "0", "0"] in [line.split() for line in out.splitlines()]

    status, out, _ = run(capsys, "--url", url, "bindings")
    assert status == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["logs", "queue", "errors", "#.error"] in rows
    assert ["logs", "queue", "errors", "db.*"] in rows

    status, out, _ = run(capsys, "--url", url, "purge", "errors")
    assert (status, out.strip()) == (0, "purged 1 message from queue 'errors'")
    assert run(capsys, "--url", url, "delete", "queue", "errors")[0] == 0
    assert run(capsys, "--url", url, "delete", "exchange", "logs")[0] == 0
    assert queue_stats(url) == {}


def test_declare_queue_binding_to_missing_exchange_fails(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    status, _, err = run(capsys, "--url", url, "declare", "queue", "q", "--bind", "nowhere:key")
    assert status == 1
    assert_one_error_line(err, "nowhere")


def test_url_may_follow_the_command(capsys: pytest.CaptureFixture[str], url: str) -> None:
    run(capsys, "declare", "queue", "late", "--url", url)
    assert "late" in queue_stats(url)


def test_kelp_url_environment_variable(
    capsys: pytest.CaptureFixture[str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KELP_URL", url)
    run(capsys, "declare", "queue", "from-env")
    assert "from-env" in queue_stats(url)


def test_bench(capsys: pytest.CaptureFixture[str], url: str) -> None:
    status, out, err = run(capsys, "--url", url, "bench", "--count", "200", "--size", "10")
    assert (status, err) == (0, "")
    assert "200 messages of 10 bytes" in out
    assert "publish" in out
    assert "consume+ack" in out
    assert "msg/s" in out
    assert queue_stats(url) == {}


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("memory://host:notaport", "invalid port"),
        ("no spaces allowed://x", "invalid scheme"),
        ("foo://somewhere", "unknown transport 'foo'"),
        ("redis://localhost/?liveness=abc", "option liveness='abc' must be a number of seconds"),
        ("redis://localhost/notanumber", "must be a whole number"),
        ("redis://localhost/?socket_timeout=-1", "option socket_timeout='-1'"),
        ("amqp://localhost/?frame_max=1", "option frame_max='1'"),
        ("sqlite:///:memory:", "sqlite:///:memory: is not supported"),
        ("amqp://user:pa/ss@localhost/", "must be percent-encoded"),
        ("memory://?colour=blue", "memory:// has no URL option colour"),
    ],
)
def test_bad_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], target: str, fragment: str) -> None:
    status, out, err = run(capsys, "--url", target, "queues")
    assert status == 2
    assert out == ""
    assert_one_error_line(err, fragment)


def test_consume_from_missing_queue(capsys: pytest.CaptureFixture[str], url: str) -> None:
    status, out, err = run(capsys, "--url", url, "consume", "ghost", "--timeout", "0.1")
    assert status == 1
    assert out == ""
    assert_one_error_line(err, "ghost")
    assert "ghost" not in queue_stats(url)  # consume never creates the queue


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["publish"],
        ["publish", "x", "--header", "novalue"],
        ["consume", "q", "--count", "x"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert_one_error_line(err)


def test_unreachable_broker_and_interrupt(
    capsys: pytest.CaptureFixture[str], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(args: object) -> int:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(cli, "cmd_queues", refused)
    status, _, err = run(capsys, "--url", url, "queues")
    assert status == 1
    assert_one_error_line(err, "Connection refused")

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_queues", interrupted)
    assert run(capsys, "--url", url, "queues") == (130, "", "")


def test_error_from_a_subprocess_has_no_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kelp", "--url", "foo://x", "demo"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, "unknown transport")


def test_consume_from_a_queue_deleted_meanwhile_is_one_error_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db"
    with Connection(url) as connection:
        connection.default_channel.queue_declare("doomed")
    consume = subprocess.Popen(
        [sys.executable, "-m", "kelp", "--url", url, "consume", "doomed", "--timeout", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Connection(url) as connection:
            deadline = time.monotonic() + 20
            while queue_stats(url)["doomed"][2] == 0:  # wait until it consumes
                assert time.monotonic() < deadline, "kelp consume never started consuming"
                time.sleep(0.05)
            connection.default_channel.queue_delete("doomed")
        out, err = consume.communicate(timeout=30)
    finally:
        consume.kill()
    assert consume.returncode == 1
    assert out == ""
    assert_one_error_line(err, "queue 'doomed' was deleted")
