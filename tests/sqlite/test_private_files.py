"""Private by default: the default database directory is 0700 and the database files 0600, whatever the
umask, so other local users cannot read the messages."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kelp import Connection

pytestmark = pytest.mark.timeout(60)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture
def default_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("KELP_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path / "user" / ".local" / "share" / "kelp" / "kelp.db"


def _use(path: Path) -> None:
    with Connection(f"sqlite:///{path}") as conn:
        conn.default_channel.queue_declare("q")
        conn.Producer().publish("secret", routing_key="q")
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert _mode(name) == 0o600, name


def test_the_default_database_is_private_whatever_the_umask(umask: int, default_db: Path) -> None:
    from kelp.connection import default_sqlite_path

    assert default_sqlite_path() == str(default_db)
    _use(default_db)
    assert _mode(default_db.parent) == 0o700
    assert _mode(default_db) == 0o600


def test_an_existing_default_database_is_made_private(umask: int, default_db: Path) -> None:
    default_db.parent.mkdir(parents=True)
    default_db.parent.chmod(0o755)
    default_db.touch()
    default_db.chmod(0o644)
    _use(default_db)
    assert _mode(default_db.parent) == 0o700
    assert _mode(default_db) == 0o600


def test_a_new_database_file_anywhere_is_private(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "shared" / "broker.db"
    path.parent.mkdir()
    path.parent.chmod(0o755)
    _use(path)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o755  # a directory the user chose is left alone


def test_an_existing_file_elsewhere_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    path.touch()
    path.chmod(0o640)
    with Connection(f"sqlite:///{path}") as conn:
        conn.default_channel.queue_declare("q")
    assert _mode(path) == 0o640
