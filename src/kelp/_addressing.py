# Generated from src/kelp/aio/_addressing.py by scripts/unasync.py; do not edit.
"""Addressing a broker: the scheme -> transport table, the default URL, and failover URL lists.

A URL never makes kelp import an arbitrary module: the scheme picks a transport from :data:`TRANSPORTS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from kelp.exceptions import UnsupportedTransport, UsageError
from kelp.transport.base import Transport
from kelp.url import URL, parse_failover


def default_sqlite_path() -> str:
    """The database file of :data:`DEFAULT_URL`: ``$KELP_HOME/kelp.db`` if ``KELP_HOME`` is set, else
    ``$XDG_DATA_HOME/kelp/kelp.db``, else ``~/.local/share/kelp/kelp.db`` (its directory is created on
    first connect)."""
    home = os.environ.get("KELP_HOME")
    if home:
        return os.path.join(os.path.abspath(os.path.expanduser(home)), "kelp.db")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data), "kelp", "kelp.db")


#: Used when no URL is given and ``KELP_URL`` is unset: the embedded SQLite broker's default file.
DEFAULT_URL = "sqlite:///" + quote(default_sqlite_path(), safe="/")

#: URL scheme -> (module, class). The only transports a URL can select.
TRANSPORTS: Mapping[str, tuple[str, str]] = {
    "memory": ("kelp.transport.memory", "MemoryTransport"),
    "sqlite": ("kelp.transport.sqlite", "SqliteTransport"),
    "amqp": ("kelp.transport.amqp", "AmqpTransport"),
    "amqps": ("kelp.transport.amqp", "AmqpTransport"),
    "redis": ("kelp.transport.redis", "RedisTransport"),
    "rediss": ("kelp.transport.redis", "RedisTransport"),
    "postgresql": ("kelp.transport.postgres", "PostgresTransport"),
    "postgres": ("kelp.transport.postgres", "PostgresTransport"),
}
#: Schemes kelp knows but whose transport is not in this build yet.
PLANNED: frozenset[str] = frozenset()
SCHEME_ALIASES = {"pyamqp": "amqp", "librabbitmq": "amqp"}


def resolve_transport(scheme: str) -> type[Transport]:
    """The transport class for a URL scheme, from the fixed table."""
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    entry = TRANSPORTS.get(scheme)
    if entry is None:
        if scheme in PLANNED:
            raise UnsupportedTransport(f"the {scheme}:// transport is not available in this version of kelp")
        known = ", ".join(sorted(TRANSPORTS))
        raise UnsupportedTransport(f"unknown transport {scheme!r}; kelp supports: {known}")
    module = importlib.import_module(entry[0])
    cls: type[Transport] = getattr(module, entry[1])
    return cls


def _urls(
    hostname: str | Sequence[str] | None,
    userid: str | None,
    password: str | None,
    virtual_host: str | None,
    port: int | None,
    transport: str | None,
    alternates: Sequence[str] | None,
) -> list[URL]:
    if hostname is None:
        hostname = os.environ.get("KELP_URL") or DEFAULT_URL
    raw = [hostname] if isinstance(hostname, str) else list(hostname)
    raw.extend(alternates or ())
    urls: list[URL] = []
    for item in raw:
        for url in parse_failover(_with_scheme(item, transport)):
            urls.append(_override(url, userid, password, virtual_host, port))
    if not urls:
        raise UsageError("Connection needs a URL (or set KELP_URL)")
    return urls


def _alternates(hostname: str | Sequence[str] | None, alternates: Sequence[str] | None) -> list[str]:
    if isinstance(hostname, str):
        given = hostname.split(";") if ";" in hostname else []
    else:
        # Kombu puts the alternates before a list of hosts.
        return [*(alternates or ()), *(hostname or ())]
    return [*given, *(alternates or ())]


def _with_scheme(hostname: str, transport: str | None) -> str:
    if "://" in hostname:
        return hostname
    return ";".join(f"{transport or 'amqp'}://{host}" for host in hostname.split(";"))


def _override(
    url: URL, userid: str | None, password: str | None, virtual_host: str | None, port: int | None
) -> URL:
    changes: dict[str, Any] = {}
    if userid is not None and url.userid is None:
        changes["userid"] = userid
    if password is not None and url.password is None:
        changes["password"] = password
    if virtual_host is not None:
        changes["virtual_host"] = virtual_host
    if port is not None:
        changes["port"] = port
    return dataclasses.replace(url, **changes) if changes else url
