"""Limits that hold before any request is read: a deadline for each request's head and body, and a cap on
the connections one client address holds open.

uvicorn has neither (its keep-alive timeout starts only after a response, and it counts connections only
server-wide), and both must act before Starlette sees a request: a socket that never finishes its headers
never reaches the app. So they live in uvicorn's protocol classes, subclassed here, because those are what
see the TCP accept, each parser step and the WebSocket upgrade. A `loop.create_server` wrapper would see the
accept but not the end of a request's head; a middleware sees nothing until the head is complete.

Behind a trusted proxy (`AMI_TRUSTED_PROXIES`) the proxy's own connections are not capped by its address:
each request is counted under the client address its `X-Forwarded-For` names (`ForwardedLimit`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette._utils import parse_host_header  # the parse Starlette's own middleware uses: both agree
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from server.errors import CloseCode

log = logging.getLogger("server.guard")

TOO_MANY = CloseCode.FORBIDDEN.reason  # the same words in an HTTP 429 and in a WebSocket close
TOO_SLOW = "the request was not complete in time"


def _response(status: bytes, message: str) -> bytes:
    body = message.encode()
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class ConnectionGuard:
    """Counts open connections per client address and knows the deadline for a request's head and body."""

    def __init__(self, header_timeout: float, max_per_address: int, trusted_proxies: tuple[str, ...]) -> None:
        self.header_timeout = header_timeout
        self.max_per_address = max_per_address
        self.trusted_proxies = list(trusted_proxies)
        # uvicorn's own parser of forwarded_allow_ips: addresses, networks or "*".
        self.trusted = ProxyHeadersMiddleware(_nothing, trusted_hosts=self.trusted_proxies).trusted_hosts
        self.open: Counter[str] = Counter()
        self._hosts: dict[Any, str] = {}  # transport -> the address it is counted under
        self.refused = 0  # connections refused for the cap, for the tests and the log
        self.on_refuse: Callable[[str], None] = _ignore  # the metrics, once the services run

    def is_trusted(self, host: str | None) -> bool:
        return bool(self.trusted_proxies) and host in self.trusted

    def take(self, host: str) -> bool:
        """Count one more connection (or proxied request) from `host`; False when it is over the cap."""
        if self.open[host] >= self.max_per_address:
            self.refused += 1
            self.on_refuse("too_many_connections")
            if self.refused % 1000 == 1:  # one line per thousand: refusing is the attacker's lever on the log
                log.warning("refused a connection from %s: %d open (AMI_MAX_CONNECTIONS_PER_IP)", host,
                            self.open[host])
            return False
        self.open[host] += 1
        return True

    def give_back(self, host: str) -> None:
        self.open[host] -= 1
        if self.open[host] <= 0:
            del self.open[host]

    def opened(self, transport: Any) -> bool:
        """A TCP connection was accepted: count it, unless it comes from a trusted proxy."""
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if host is None or self.is_trusted(host):
            return True
        if not self.take(host):
            return False
        self._hosts[transport] = host
        return True

    def closed(self, transport: Any) -> None:
        host = self._hosts.pop(transport, None)
        if host is not None:
            self.give_back(host)


def _ignore(reason: str) -> None:
    return None


async def _nothing(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    return None


def guarded_protocols(guard: ConnectionGuard) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
    """uvicorn's HTTP and WebSocket protocol classes, bound to `guard`."""

    class GuardedHttp(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_done = False
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not guard.opened(transport):
                self._refused = True
                transport.write(_response(b"429 Too Many Requests", TOO_MANY))
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            self._head_done = False
            if self._deadline is None:
                self._deadline = self.loop.call_later(guard.header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            guard.on_refuse("deadline")
            if not self._head_done:  # nobody answers this request yet: say why it ends
                self.transport.write(_response(b"408 Request Timeout", TOO_SLOW))
            log.debug("closed a connection whose request was not complete within %.1f s", guard.header_timeout)
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # each request on a kept-alive connection gets its own deadline

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()  # the head is complete; the WebSocket protocol takes over the connection
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            guard.closed(self.transport)
            if self._refused:
                self.connections.discard(self)
                return
            super().connection_lost(exc)

    class GuardedWebSocket(WebSocketsSansIOProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self.transport)
            super().connection_lost(exc)

    return GuardedHttp, GuardedWebSocket


class ForwardedLimit:
    """ASGI middleware: requests that come through a trusted proxy take their client address from
    `X-Forwarded-For` (uvicorn's parser) and count against that address's cap while they run."""

    def __init__(self, app: Any, guard: ConnectionGuard) -> None:
        self.app = app
        self.guard = guard
        self.proxied = ProxyHeadersMiddleware(self._counted, trusted_hosts=guard.trusted_proxies)

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        # Not a coroutine: a direct connection's request runs as the app's own awaitable, so an idle socket keeps
        # no frame of this middleware alive (a WebSocket lives as long as its connection).
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.guard.is_trusted(client[0]):
            return self.proxied(scope, receive, send)
        return self.app(scope, receive, send)

    async def _counted(self, scope: Any, receive: Any, send: Any) -> None:
        host = scope["client"][0] if scope.get("client") else ""
        if not self.guard.take(host):
            if scope["type"] == "http":
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": TOO_MANY.encode()})
            else:
                await send({"type": "websocket.close", "code": CloseCode.FORBIDDEN, "reason": TOO_MANY})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.guard.give_back(host)


class HostCheck(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware (against DNS rebinding), which keeps no frame of its own alive for an allowed
    request: the check runs, then the app's own awaitable is returned. A refusal is Starlette's (400, or its www
    redirect)."""

    def __call__(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:  # type: ignore[override]
        if self.allow_any or scope["type"] not in ("http", "websocket") or self._allowed(scope):
            return self.app(scope, receive, send)
        return super().__call__(scope, receive, send)

    def _allowed(self, scope: Any) -> bool:
        parsed = parse_host_header(Headers(scope=scope).get("host"))
        if parsed is None:
            return False
        host = parsed.host.lower()
        return any(host == pattern or (pattern.startswith("*") and host.endswith(pattern[1:]))
                   for pattern in self.allowed_hosts)
