"""HTTP downloads that cannot be turned against the network they run in.

Every connection, the first and each redirect hop, resolves its host itself, refuses loopback,
private, link-local, multicast, unspecified and reserved addresses (unless allowed), and connects
to the very address it checked, so a DNS answer that changes between check and use (rebinding)
gains nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from actors._base import JobFailed

USER_AGENT = "async-ml-inference/0.1 (+https://github.com/async-ml-inference)"
MAX_REDIRECTS = 5
CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the order the system prefers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def forbidden_reason(address: str) -> str | None:
    """Why a user-supplied URL may not reach `address`, or None when it may."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for reason, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if hit:
            return reason
    if not ip.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class UrlGuard:
    """Decides which addresses outgoing connections may reach."""

    allow_private: bool = False
    resolver: Resolver = system_resolver
    reason: Callable[[str], str | None] = forbidden_reason

    def addresses(self, host: str, port: int) -> list[str]:
        try:
            found = self.resolver(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise JobFailed("fetch_failed", f"cannot resolve host {host!r}: {exc}") from None
        if not found:
            raise JobFailed("fetch_failed", f"host {host!r} has no address")
        if not self.allow_private:
            for address in found:
                why = self.reason(address)
                if why:
                    raise JobFailed(
                        "forbidden_url", f"{host} resolves to {why} address {address}; such URLs are refused"
                    )
        return found


def _guarded_connection(base: type[HTTPConnection], guard: UrlGuard) -> type[HTTPConnection]:
    class GuardedConnection(base):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> socket.socket:
            last: OSError | None = None
            for address in guard.addresses(self._dns_host, self.port):
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    for option in self.socket_options or ():
                        sock.setsockopt(*option)
                    sock.settimeout(self.timeout)
                    sock.connect((address, self.port))
                    return sock
                except TimeoutError as exc:
                    sock.close()
                    raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
                except OSError as exc:
                    sock.close()
                    last = exc
            raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")

    return GuardedConnection


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose connections all go through a UrlGuard."""

    def __init__(self, guard: UrlGuard) -> None:
        self.guard = guard
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_conn = _guarded_connection(HTTPConnection, self.guard)
        https_conn = _guarded_connection(HTTPSConnection, self.guard)
        http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
        https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
        self.poolmanager.key_fn_by_scheme = dict(self.poolmanager.key_fn_by_scheme)


def make_session(guard: UrlGuard) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment would bypass the guard
    session.max_redirects = MAX_REDIRECTS
    session.headers["User-Agent"] = USER_AGENT
    adapter = GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JobFailed("invalid_args", f"{url!r} is not an http(s) URL")


@dataclass
class Download:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Fetcher:
    """Streams a URL into memory with a size cap, a time limit and the guard on every hop."""

    guard: UrlGuard
    timeout: float = 10.0
    max_bytes: int = 100 * 1024 * 1024
    deadline: float | None = None  # seconds for the whole download; None: 10 timeouts

    def __post_init__(self) -> None:
        self.session = make_session(self.guard)

    def get(self, url: str, headers: dict[str, str] | None = None, max_bytes: int | None = None) -> Download:
        check_url(url)
        limit = self.max_bytes if max_bytes is None else max_bytes
        try:
            response = self.session.get(url, stream=True, timeout=(self.timeout, self.timeout),
                                        headers=headers, allow_redirects=True)
        except JobFailed:
            raise
        except requests.exceptions.Timeout:
            raise JobFailed("timeout", f"no answer from {_host(url)} within {self.timeout:g} s") from None
        except requests.exceptions.TooManyRedirects:
            raise JobFailed("fetch_failed", f"{url} redirects more than {MAX_REDIRECTS} times") from None
        except requests.exceptions.InvalidSchema as exc:
            raise JobFailed("forbidden_url", f"a redirect from {url} leaves http(s): {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise JobFailed("fetch_failed", f"cannot fetch {url}: {_reason(exc)}") from None
        with response:
            body = b"".join(self._stream(response, url, limit))
            return Download(response.url, response.status_code, dict(response.headers), body)

    def _stream(self, response: requests.Response, url: str, limit: int) -> Iterator[bytes]:
        declared = response.headers.get("Content-Length", "")
        if response.status_code < 300 and declared.isdigit() and int(declared) > limit:
            raise JobFailed("too_large", f"{url} is {int(declared)} bytes; the limit is {limit}")
        deadline = time.monotonic() + (self.deadline or self.timeout * 10)
        size = 0
        try:
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise JobFailed("too_large", f"{url} is larger than the limit of {limit} bytes")
                if time.monotonic() > deadline:
                    raise JobFailed("timeout", f"downloading {url} took too long")
                yield chunk
        except requests.exceptions.RequestException as exc:
            if "timed out" in str(exc).lower():
                raise JobFailed("timeout", f"{_host(url)} stopped sending for {self.timeout:g} s") from None
            raise JobFailed("fetch_failed", f"download of {url} broke off: {_reason(exc)}") from None


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 exception chain."""
    seen = exc
    while True:
        inner = seen.__context__ or seen.__cause__
        if isinstance(inner, NameResolutionError | NewConnectionError):
            return str(inner).split(": ", 1)[-1]
        if inner is None or inner is seen:
            break
        seen = inner
    text = str(exc.args[0]) if exc.args else str(exc)
    if "Max retries exceeded" in text and "(Caused by" in text:
        text = text.split("(Caused by", 1)[1].rstrip(")")
    return text
