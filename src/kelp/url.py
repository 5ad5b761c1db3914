"""Connection URLs, ``transport://userid:password@hostname:port/path?query``, parsed into a :class:`URL`.

::

    amqp://guest:guest@localhost:5672//     vhost "/" (the path, URL-decoded; "" or none means "/")
    amqp://user:p%40ss@[::1]/prod           IPv6 host in brackets; "%40" is "@" in the password
    redis://localhost:6379/0                path "0" (the database)
    sqlite:///relative/path.db              path "relative/path.db"
    sqlite:////abs/path.db                  path "/abs/path.db"
    memory://                               the process's default in-memory broker
    memory://name                           a separate in-memory broker, named by the host part

Userid, password, host, path and query are URL-decoded, so a reserved character in a password is written
percent-encoded (``@`` as ``%40``, ``/`` as ``%2F``, ``;`` as ``%3B``). The scheme is lower-cased;
``pyamqp`` and ``librabbitmq`` (Kombu's names) become ``amqp``. A missing port takes the scheme's default
(:data:`DEFAULT_PORTS`). Any syntactically valid scheme parses: which transports exist is the connection
layer's business. Errors raise :class:`~kelp.exceptions.InvalidURL` quoting the URL with its password
masked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from kelp.exceptions import InvalidURL

__all__ = ["DEFAULT_PORTS", "SCHEME_ALIASES", "URL", "Query", "parse_failover", "parse_url"]

#: The port a URL gets when it names none.
DEFAULT_PORTS: Final[Mapping[str, int]] = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6380}

#: Kombu's other names for a scheme.
SCHEME_ALIASES: Final[Mapping[str, str]] = {"pyamqp": "amqp", "librabbitmq": "amqp"}

#: Schemes whose path is an AMQP virtual host, "/" when empty.
_VHOST_SCHEMES: Final = frozenset({"amqp", "amqps"})

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`#]")  # whitespace, controls, and what RFC 3986 excludes
_PASSWORD_MASK: Final = "**"


class Query(Mapping[str, str]):
    """The query options of a URL: an immutable, hashable mapping."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Query({self._items!r})"


def _mask(url: str) -> str:
    """The URL with any password replaced by ``**``; works on URLs that do not parse."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    return f"{scheme}://{user}{':' + _PASSWORD_MASK if colon else ''}@{rest[at + 1 :]}"


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed connection URL. Immutable and hashable; ``str()`` and ``repr()`` mask the password.

    ``path`` is everything after ``scheme://host/``, URL-decoded, or None when the URL has no path.
    ``virtual_host`` is the same text, except that for ``amqp``/``amqps`` an empty or missing path means
    ``"/"``. ``query`` holds the options after ``?`` (the last value wins for a repeated key).
    """

    transport: str
    hostname: str | None = None
    port: int | None = None
    userid: str | None = None
    password: str | None = None
    virtual_host: str | None = None
    query: Mapping[str, str] = field(default_factory=Query)
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query, Query):
            object.__setattr__(self, "query", Query(self.query))

    def as_uri(self, include_password: bool = False) -> str:
        """The URL as text, parseable back to an equal :class:`URL` (with ``include_password=True``).

        The password is shown as ``**`` unless ``include_password`` is true.
        """
        parts = [self.transport, "://"]
        if self.userid is not None or self.password is not None:
            parts.append(quote(self.userid or "", safe=""))
            if self.password is not None:
                secret = quote(self.password, safe="") if include_password else _PASSWORD_MASK
                parts += [":", secret]
            parts.append("@")
        if self.hostname is not None:
            host = quote(self.hostname, safe=":")
            parts.append(f"[{host}]" if ":" in self.hostname else host)
        if self.port is not None and (
            self.hostname is not None or self.port != DEFAULT_PORTS.get(self.transport)
        ):
            parts.append(f":{self.port}")
        path = self.path
        default_vhost = "/" if self.transport in _VHOST_SCHEMES else None
        if path is None and self.virtual_host != default_vhost:
            path = self.virtual_host  # a URL built by hand, with a vhost but no path
        if path is not None:
            parts += ["/", quote(path, safe="/")]
        if self.query:
            parts += ["?", urlencode(list(self.query.items()), quote_via=quote, safe="")]
        return "".join(parts)

    def __str__(self) -> str:
        return self.as_uri()

    def __repr__(self) -> str:
        return f"URL({self.as_uri()!r})"


def _split_host_port(hostport: str, url: str) -> tuple[str | None, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidURL(f"unclosed '[' in the host of {_mask(url)!r}")
        host = unquote(hostport[1:end])
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidURL(f"invalid IPv6 address {host!r} in {_mask(url)!r}") from None
        rest = hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidURL(f"unexpected {rest!r} after the IPv6 address in {_mask(url)!r}")
        port_text = rest[1:]
    else:
        host_text, _, port_text = hostport.partition(":")
        if "[" in host_text or "]" in host_text:
            raise InvalidURL(f"misplaced bracket in the host of {_mask(url)!r}")
        host = unquote(host_text)
    port: int | None = None
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
            raise InvalidURL(f"invalid port {port_text!r} in {_mask(url)!r}: expected 0-65535")
        port = int(port_text)
    return host or None, port


def parse_url(url: str) -> URL:
    """Parse one connection URL (surrounding whitespace is ignored).

    Raises :class:`InvalidURL` for a missing or malformed scheme, a bad port, a malformed IPv6 host, or
    characters a URL may not contain (spaces, controls, ``#``...). The message quotes the URL with its
    password masked.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"a URL must be a str, not {type(url).__name__}")
    text = url.strip()
    match = _SCHEME.match(text)
    if match is None:
        scheme_end = text.find("://")
        what = "no scheme" if scheme_end <= 0 else f"invalid scheme {text[:scheme_end]!r}"
        raise InvalidURL(f"{what} in URL {_mask(text)!r}: expected transport://...")
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        raise InvalidURL(
            f"character {bad.group()!r} is not allowed in URL {_mask(text)!r}; percent-encode it"
        )
    scheme = match.group(1).lower()
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    rest = text[match.end() :]

    rest, qmark, query_text = rest.partition("?")
    slash = rest.find("/")
    authority, raw_path = (rest, None) if slash < 0 else (rest[:slash], rest[slash + 1 :])
    userinfo, at, hostport = authority.rpartition("@")
    userid = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        userid = unquote(user_text) or None
        if colon:
            password = unquote(password_text) or None
    try:
        hostname, port = _split_host_port(hostport, text)
    except InvalidURL:
        if not at and "@" in text[match.end() + len(authority) :]:
            # "user:pa/ss@host": the authority ended at a '/' (or '?') of the password, whose first part
            # then reads as a port; the message must not quote that part.
            raise InvalidURL(
                f"cannot parse {_mask(text)!r}: a '/', '?' or '#' in the user name or password must be "
                "percent-encoded ('/' as %2F, '?' as %3F, '#' as %23)"
            ) from None
        raise
    if port is None:
        port = DEFAULT_PORTS.get(scheme)

    path = None if raw_path is None else unquote(raw_path)
    virtual_host = path or None
    if scheme in _VHOST_SCHEMES and not path:
        virtual_host = "/"
    query = Query(dict(parse_qsl(query_text, keep_blank_values=True))) if qmark else Query()
    return URL(scheme, hostname, port, userid, password, virtual_host, query, path)


def parse_failover(urls: str | Sequence[str]) -> list[URL]:
    """Parse a failover list: one string of ``;``-separated URLs, or a sequence of them (each of which may
    itself hold several). Empty entries are skipped; an empty list raises :class:`InvalidURL`."""
    texts = [urls] if isinstance(urls, str) else list(urls)
    parsed = [parse_url(part) for text in texts for part in text.split(";") if part.strip()]
    if not parsed:
        raise InvalidURL("no URL given")
    return parsed
