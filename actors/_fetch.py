"""HTTP downloads that cannot be turned against the network they run in.

Every connection, the first and each redirect hop, resolves its host itself, refuses loopback,
private, link-local, multicast, unspecified and reserved addresses (unless allowed), and connects
to the very address it checked, so a DNS answer that changes between check and use (rebinding)
gains nothing.

Every socket a download opens or reuses belongs to its `Scope`s: the download's own, which a timer
stops at the wall-clock deadline, and the job's, which the actor stops when the job is cancelled.
Stopping shuts the sockets down, so no read, however slowly a server trickles, outlives either.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from actors._base import JobErrorCode, JobFailed

USER_AGENT = "async-ml-inference/0.1 (+https://github.com/async-ml-inference)"
MAX_REDIRECTS = 5
CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class Scope:
    """The sockets of some downloads, shut down together when the scope stops (deadline or cancel)."""

    def __init__(self) -> None:
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.stopped: str | None = None  # why: "deadline" or "cancelled"

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            if self.stopped is None:
                self._sockets.add(sock)
                return
        _shut(sock)

    def stop(self, why: str) -> None:
        with self._lock:
            if self.stopped is not None:
                return
            self.stopped, sockets, self._sockets = why, self._sockets, set()
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once; close stays with its owner


job_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("job_scope", default=None)
_active = threading.local()  # the scopes of the download running in this thread


def _attach(sock: socket.socket | None) -> None:
    if sock is not None:
        for scope in getattr(_active, "scopes", ()):
            scope.attach(sock)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the order the system prefers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: the last 32 bits are an IPv4 address
SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, still routed inside some networks


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and leads to: mapped, compatible, 6to4, NAT64, Teredo."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]  # the client behind the relay
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, "IPv4-compatible" (deprecated, still parsed)
        return ipaddress.IPv4Address(int(ip))
    return None


def forbidden_reason(address: str) -> str | None:
    """Why a user-supplied URL may not reach `address`, or None when it may."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in SITE_LOCAL:
            return "site-local"
        inner = embedded_ipv4(ip)
        if inner is not None:
            return forbidden_reason(str(inner))
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
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"cannot resolve host {host!r}: {exc}") from None
        if not found:
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"host {host!r} has no address")
        if not self.allow_private:
            for address in found:
                why = self.reason(address)
                if why:  # the address itself stays out of the message: it would map internal names for anyone
                    article = "an" if why[0] in "aeiou" else "a"
                    message = f"{host} resolves to {article} {why} address; such URLs are refused"
                    raise JobFailed(JobErrorCode.FORBIDDEN_URL, message)
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
                    _attach(sock)
                    sock.connect((address, self.port))
                    return sock
                except TimeoutError as exc:
                    sock.close()
                    raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
                except OSError as exc:
                    sock.close()
                    last = exc
            raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")

        def request(self, *args: Any, **kwargs: Any) -> None:
            _attach(self.sock)  # a kept-alive connection, reused: it belongs to this download now
            super().request(*args, **kwargs)

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
    """Refuse, as invalid_args, a URL that the download would choke on later: urlsplit raises ValueError
    for an unbalanced bracket, `.port` for a port out of range, and the IDNA codec for a bad host name."""
    shown = repr(url[:200])
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} is not an http(s) URL")
    if port == 0:
        raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} names port 0; ports are 1 to 65535")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} has brackets around something that is not an "
                                                       "IPv6 address") from None
    if "%" in host or any(char.isspace() or ord(char) < 32 for char in host):
        raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} has characters a host name cannot hold")
    if not host.isascii() and not host.startswith("["):
        try:
            host.encode("idna")
        except UnicodeError:
            raise JobFailed(JobErrorCode.INVALID_ARGS, f"{shown} has a host name that is not valid (IDNA)") from None


@dataclass
class Download:
    url: str
    status: int
    headers: dict[str, str]
    body: bytes  # the whole body, or its first bytes when it was written to a file
    size: int  # bytes received


@dataclass
class Fetcher:
    """Streams a URL with a size cap, a wall-clock deadline and the guard on every hop."""

    guard: UrlGuard
    timeout: float = 30.0  # seconds for a whole download, connect to last byte
    max_bytes: int = 100 * 1024 * 1024

    def __post_init__(self) -> None:
        self.session = make_session(self.guard)

    def get(self, url: str, headers: dict[str, str] | None = None, max_bytes: int | None = None,
            into: IO[bytes] | None = None, keep: int | None = None,
            on_response: Callable[[int, dict[str, str]], None] | None = None) -> Download:
        """Download `url`: the body in memory, or written to `into` with only its first `keep` bytes kept.
        `on_response` hears the status and headers before the body comes (to read a body as it arrives)."""
        check_url(url)
        limit = self.max_bytes if max_bytes is None else max_bytes
        scopes = [download := Scope()]
        if (job := job_scope.get()) is not None:
            scopes.append(job)
        timer = threading.Timer(self.timeout, download.stop, ("deadline",))
        timer.daemon = True
        _active.scopes = scopes
        timer.start()
        try:
            return self._get(url, headers, limit, into, keep, on_response)
        except Exception as exc:  # a stopped scope explains whatever the shut-down socket raised
            stopped = next((scope.stopped for scope in scopes if scope.stopped), None)
            if stopped == "deadline":
                message = f"downloading {url} took longer than {self.timeout:g} s"
                raise JobFailed(JobErrorCode.TIMEOUT, message) from None
            if stopped == "cancelled":
                raise JobFailed(JobErrorCode.TIMEOUT, "the job was cancelled") from None
            if isinstance(exc, JobFailed):
                raise
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"cannot fetch {url}: {_reason(exc)}") from None
        finally:
            timer.cancel()
            _active.scopes = ()

    def _get(self, url: str, headers: dict[str, str] | None, limit: int, into: IO[bytes] | None,
             keep: int | None, on_response: Callable[[int, dict[str, str]], None] | None) -> Download:
        try:
            response = self.session.get(url, stream=True, timeout=(self.timeout, self.timeout),
                                        headers=headers, allow_redirects=True)
        except JobFailed:
            raise
        except requests.exceptions.Timeout:
            raise JobFailed(JobErrorCode.TIMEOUT, f"no answer from {_host(url)} within {self.timeout:g} s") from None
        except requests.exceptions.TooManyRedirects:
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"{url} redirects more than {MAX_REDIRECTS} times") from None
        except requests.exceptions.InvalidSchema as exc:
            raise JobFailed(JobErrorCode.FORBIDDEN_URL, f"a redirect from {url} leaves http(s): {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"cannot fetch {url}: {_reason(exc)}") from None
        with response:
            if on_response is not None:
                on_response(response.status_code, dict(response.headers))
            if into is None:
                body = b"".join(self._stream(response, url, limit))
                return Download(response.url, response.status_code, dict(response.headers), body, len(body))
            kept, size = bytearray(), 0
            for chunk in self._stream(response, url, limit):
                into.write(chunk)
                size += len(chunk)
                if keep is not None and len(kept) < keep:
                    kept += chunk[:keep - len(kept)]
            return Download(response.url, response.status_code, dict(response.headers), bytes(kept), size)

    def _stream(self, response: requests.Response, url: str, limit: int) -> Iterator[bytes]:
        declared = response.headers.get("Content-Length", "")
        if response.status_code < 300 and declared.isdigit() and int(declared) > limit:
            raise JobFailed(JobErrorCode.TOO_LARGE, f"{url} is {int(declared)} bytes; the limit is {limit}")
        size = 0
        try:
            for chunk in response.iter_content(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise JobFailed(JobErrorCode.TOO_LARGE, f"{url} is larger than the limit of {limit} bytes")
                yield chunk
        except requests.exceptions.RequestException as exc:
            if "timed out" in str(exc).lower():
                raise JobFailed(JobErrorCode.TIMEOUT, f"{_host(url)} stopped sending for {self.timeout:g} s") from None
            raise JobFailed(JobErrorCode.FETCH_FAILED, f"download of {url} broke off: {_reason(exc)}") from None


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


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


class Arriving:
    """A download's spool file, read while the download writes it: a read waits for the bytes it asks for (or the
    download's end), so decoding starts with the first bytes, not the last. The download thread calls `respond`,
    `write` and `finish`; the reader reads. A read never raises (libsndfile calls it through a C callback, where an
    exception would be lost): once the download failed, reads end, and `failure` says why."""

    WAIT = 0.5  # seconds between looks while waiting (a finish or a write wakes the reader at once)

    def __init__(self, path: str) -> None:
        self._writer = open(path, "wb")  # noqa: SIM115 - closed by `finish`
        self._reader = open(path, "rb")  # noqa: SIM115 - closed by `close`
        self._changed = threading.Condition()
        self._written = 0
        self._position = 0
        self.status: int | None = None
        self.length: int | None = None  # Content-Length, when the server said it
        self.done = False
        self.failure: JobFailed | None = None
        self.abandoned = False

    # --- the download's side --------------------------------------------------------------------------

    def respond(self, status: int, headers: dict[str, str]) -> None:
        declared = headers.get("Content-Length", "")
        with self._changed:
            self.status, self.length = status, int(declared) if declared.isdigit() else None
            self._changed.notify_all()

    def write(self, chunk: bytes) -> int:
        if self.abandoned:
            raise JobFailed(JobErrorCode.FETCH_FAILED, "the download is no longer needed")
        self._writer.write(chunk)
        self._writer.flush()
        with self._changed:
            self._written += len(chunk)
            self._changed.notify_all()
        return len(chunk)

    def finish(self, failure: JobFailed | None = None) -> None:
        self._writer.close()
        with self._changed:
            self.done, self.failure = True, failure
            self._changed.notify_all()

    # --- the reader's side ----------------------------------------------------------------------------

    def response(self) -> int | None:
        """The HTTP status once the response began (None if the download failed before it)."""
        with self._changed:
            while self.status is None and not self.done:
                self._changed.wait(self.WAIT)
            return self.status

    def _wait_for(self, size: int | None) -> int:
        """Bytes there once `size` are (None: all of them), or the download ended."""
        with self._changed:
            while not self.done and (size is None or self._written < size):
                self._changed.wait(self.WAIT)
            return self._written

    def read(self, count: int = -1) -> bytes:
        there = self._wait_for(None if count < 0 else self._position + count)
        if self.failure is not None:
            return b""
        self._reader.seek(self._position)
        data = self._reader.read(max(min(there - self._position, count if count >= 0 else there), 0))
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            end = self.length if self.length is not None else self._wait_for(None)
            self._position = end + offset
        elif whence == os.SEEK_CUR:
            self._position += offset
        else:
            self._position = offset
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self.abandoned = True
        self._reader.close()
