"""kelp.testing as a third party uses it: check_transport's verdicts, Capabilities, the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kelp._addressing
from kelp._envelope import Delivery
from kelp.exceptions import UsageError
from kelp.testing import ALL_FEATURES, Capabilities, TransportCheckFailed, check_transport
from kelp.transport.memory import MemoryTransport

BROKEN = "sqlite:////proc/kelp-no-such-dir/{unique}.db"


def test_a_conforming_transport_passes() -> None:
    result = check_transport(
        "memory://{unique}", faces=["sync"], select="TestRoutingFanout or routing_fanout"
    )
    assert result.ok
    assert len(result.passed) >= 4
    assert not result.failed


def test_a_broken_transport_fails_with_the_failing_tests_named() -> None:
    # The database's directory does not exist: every test that connects fails.
    with pytest.raises(TransportCheckFailed) as raised:
        check_transport(BROKEN, faces=["aio"], select="routing_direct")
    result = raised.value.result
    assert not result.ok
    assert result.failed
    assert all("test_routing_direct" in node for node in result.failed)
    assert "failed" in str(raised.value)


def test_without_raising_the_result_is_returned() -> None:
    result = check_transport(
        BROKEN,
        faces=["sync"],
        select="routing_fanout",
        raise_on_failure=False,
    )
    assert not result.ok
    assert result.failed


def test_what_a_transport_does_not_claim_is_skipped_with_the_reason() -> None:
    claims = Capabilities("partial", exchange_types=frozenset({"direct", "fanout", "topic"})).without("ttl")
    result = check_transport(
        "memory://{unique}", claims, faces=["sync"], select="routing_headers or test_ttl or routing_direct"
    )
    assert result.ok
    assert result.skipped
    reasons = set(result.skipped.values())
    assert reasons == {"partial does not claim 'headers'", "partial does not claim 'ttl'"}
    assert any("routing_direct" in node for node in result.passed)


def test_a_callable_url_factory_gets_a_fresh_directory_per_test(tmp_path: Path) -> None:
    seen: list[Path] = []

    def factory(directory: Path) -> str:
        seen.append(directory)
        return f"sqlite:///{directory}/broker.db"

    check_transport(factory, faces=["sync"], select="routing_fanout")
    assert len(seen) >= 4
    assert len(set(seen)) == len(seen)


def test_no_test_selected_is_not_a_pass() -> None:
    with pytest.raises(TransportCheckFailed):
        check_transport("memory://{unique}", faces=["sync"], select="no_such_test_anywhere")


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="faces"):
        check_transport("memory://{unique}", faces=["threads"])
    with pytest.raises(UsageError, match="unknown features"):
        Capabilities(features=frozenset({"teleport"}))
    with pytest.raises(UsageError, match="unknown exchange types"):
        Capabilities(exchange_types=frozenset({"x-consistent-hash"}))
    with pytest.raises(UsageError, match="unknown capabilities"):
        Capabilities().without("telepathy")
    assert Capabilities().supports("dead_consumer")
    assert not Capabilities().supports("restart")
    assert Capabilities(restart=lambda: None).supports("restart")
    assert "dead_consumer" in ALL_FEATURES


def test_the_kit_runs_from_the_command_line_in_another_directory(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "pytest", "-p", "kelp.testing.plugin", "--pyargs", "kelp.testing.sync",
        "--kelp-url", "memory://{unique}", "--kelp-without", "ttl", "-k", "routing_fanout or test_ttl",
        "-q", "-rs", "-p", "no:cacheprovider",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "memory does not claim 'ttl'" in done.stdout
    assert " passed" in done.stdout


def test_the_kit_refuses_to_run_without_a_transport(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "kelp.testing.plugin",
        "--pyargs",
        "kelp.testing.sync",
        "-q",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "--kelp-url" in done.stdout + done.stderr


class _ForgetfulChannel:
    """A memory channel whose ``get`` never flags a redelivery."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def get(self, queue: str, no_ack: bool) -> Delivery | None:
        delivery: Delivery | None = self._channel.get(queue, no_ack)
        if delivery is not None:
            delivery.redelivered = False
        return delivery


class ForgetfulTransport(MemoryTransport):
    """memory://, except that it never flags a redelivery: a bug the kit must catch."""

    def open_channel(self) -> Any:
        return _ForgetfulChannel(super().open_channel())

    def drain(self, timeout: float | None) -> list[Delivery]:
        deliveries = super().drain(timeout)
        for delivery in deliveries:
            delivery.redelivered = False
        return deliveries


def test_a_transport_that_forgets_redelivered_flags_fails_the_redelivery_tests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(kelp._addressing.TRANSPORTS, "forgetful", (__name__, "ForgetfulTransport"))
    result = check_transport(
        "forgetful://{unique}", faces=["sync"], select="redeliver or requeue", raise_on_failure=False
    )
    assert not result.ok
    assert any("test_reject_with_requeue_redelivers_flagged" in node for node in result.failed)
    assert "redelivered" in "".join(result.failed.values())
    control = check_transport("memory://{unique}", faces=["sync"], select="redeliver or requeue")
    assert control.ok


def test_an_unknown_feature_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "pytest", "-p", "kelp.testing.plugin", "--pyargs", "kelp.testing.sync",
        "--kelp-url", "memory://{unique}", "--kelp-without", "teleport", "-q", "-p", "no:cacheprovider",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 4  # pytest's usage error
    assert "unknown capabilities ['teleport']" in done.stderr
