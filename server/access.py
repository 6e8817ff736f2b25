"""Who may use the server: Host names (against DNS rebinding), browser origins (against cross-site use of the
socket and REST), client tokens, and keeping those tokens out of logs."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from server.config import Settings
from server.jobs import Job
from server.tenants import Tenant, address_tenant, parse_token

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.IGNORECASE)
TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)
JOB_IN_PATH = re.compile(r"(/(?:jobs|task)/)[^/?#\s\"]+")  # a job id lets one read (or cancel) the job

Origin = tuple[str, str, int]  # scheme, host, port


class Peer(Protocol):
    @property
    def host(self) -> str: ...


class HTTPConnection(Protocol):
    """What the rules read of a request or a WebSocket handshake (Starlette's `HTTPConnection` is one): its peer and
    its ASGI scope, read as it is. Starlette's `headers` and `query_params` would be built and kept on the
    connection, 0.86 KiB for every idle socket it holds."""

    @property
    def client(self) -> Peer | None: ...

    @property
    def scope(self) -> Mapping[str, Any]: ...


def header(connection: HTTPConnection, name: bytes) -> str | None:
    """The first header `name` (lower case, as ASGI gives names) of the request or handshake, or None."""
    for key, value in connection.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_origin(text: str) -> Origin | None:
    """An Origin header as (scheme, host, port), default ports made explicit; None when it is no origin."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None or parts.path not in ("", "/"):
        return None
    return parts.scheme.lower(), _bracketed(parts.hostname.lower()), port


class Access:
    """The server's access rules, worked out once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.tokens: list[tuple[bytes, Tenant]] = [
            (secret.encode(), Tenant(name, operator))
            for entries, operator in ((settings.tokens, False), (settings.operator_tokens, True))
            for name, secret in map(parse_token, entries)
        ]
        self.isolating = bool(self.tokens)  # with tokens, a tenant sees only its own jobs
        self.operators_named = bool(settings.operator_tokens)  # then only they may use the operator endpoints
        self.hosts = self._hosts(settings)
        self.any_origin = "*" in settings.allowed_origins
        own = {("http", host, settings.port) for host in self.hosts if "*" not in host}
        listed = {origin for text in settings.allowed_origins if (origin := parse_origin(text)) is not None}
        self.origins: frozenset[Origin] = frozenset(own | listed)

    @staticmethod
    def _hosts(settings: Settings) -> list[str]:
        """Names the Host header may carry: loopback ones when bound to loopback (or to every interface, with
        this machine's names), else the bind address; plus AMI_ALLOWED_HOSTS."""
        bind = settings.host.strip("[]")
        if _is_loopback(bind):
            hosts = [*LOOPBACK_NAMES, _bracketed(bind)]
        elif bind in ("0.0.0.0", "::", ""):
            hosts = [*LOOPBACK_NAMES, socket.gethostname().lower(), socket.getfqdn().lower()]
        else:
            hosts = [_bracketed(bind.lower())]
        hosts += [_bracketed(host.lower()) for host in settings.allowed_hosts]
        return list(dict.fromkeys(hosts))

    def origin_allowed(self, origin: str | None) -> bool:
        """Programs send no Origin; browsers do, and must come from this server's own origin or an allowed one."""
        if origin is None or self.any_origin:
            return True
        parsed = parse_origin(origin)
        return parsed is not None and parsed in self.origins

    def token_tenant(self, token: str | None) -> Tenant | None:
        """The tenant a token names, or None; every known secret is compared, in constant time each."""
        if token is None:
            return None
        presented, found = token.encode(), None
        for secret, tenant in self.tokens:
            if hmac.compare_digest(presented, secret) and found is None:
                found = tenant
        return found

    def token_valid(self, token: str | None) -> bool:
        return not self.tokens or self.token_tenant(token) is not None

    def tenant(self, token: str | None, host: str | None) -> Tenant | None:
        """Who a client is: its token's tenant; without tokens, its address; None for an invalid token."""
        if not self.tokens:
            return address_tenant(host)
        return self.token_tenant(token)

    def connection_tenant(self, connection: HTTPConnection, token: str | None = None) -> Tenant | None:
        """The tenant of a connection: by `token` (an `auth` frame's), else by the token it presented."""
        client = connection.client
        return self.tenant(token or presented_token(connection), client.host if client else None)

    def connection_token_valid(self, connection: HTTPConnection) -> bool:
        return self.token_valid(presented_token(connection))

    def may_operate(self, tenant: Tenant | None) -> bool:
        """The operator endpoints: any client with a valid token, or only operators once AMI_OPERATOR_TOKENS is set."""
        return tenant is not None and (not self.operators_named or tenant.operator)

    def may_see(self, tenant: Tenant | None, job: Job) -> bool:
        """Whether `tenant` may read, watch or cancel `job`: with tokens, only its own (operators: all)."""
        if not self.isolating:
            return True
        return tenant is not None and (tenant.operator or job.tenant == tenant.name)


def presented_token(connection: HTTPConnection) -> str | None:
    """An `Authorization: Bearer` header's token, else the query's `token` (the last one, as Starlette reads it)."""
    authorization = header(connection, b"authorization") or ""
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    query = connection.scope.get("query_string", b"")
    if b"token" not in query:
        return None
    tokens = [value for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if name == "token"]
    return tokens[-1] if tokens else None


def is_json(content_type: str) -> bool:
    return bool(JSON_TYPES.match(content_type.strip()))


def _redact(text: str) -> str:
    if "token=" in text.lower():
        text = TOKEN_IN_TEXT.sub(r"\1***", text)
    if "/jobs/" in text or "/task/" in text:
        text = JOB_IN_PATH.sub(r"\1{id}", text)
    return text


class RedactTokens(logging.Filter):
    """Rewrites `token=...` and the job id of `/jobs/{id}` and `/task/{id}` in log records (uvicorn's access log
    writes whole request lines): a token or an id in a log would let whoever reads it use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        return True


def redact_tokens_in_logs() -> None:
    """Install the filter on the loggers that write request lines (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
