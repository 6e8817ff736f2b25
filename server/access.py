"""Who may use the server: Host names (against DNS rebinding), browser origins (against cross-site use of the
socket and REST), client tokens, and keeping those tokens out of logs."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from server.config import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.IGNORECASE)
TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)

Origin = tuple[str, str, int]  # scheme, host, port


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
        self.tokens = settings.tokens
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

    def token_valid(self, token: str | None) -> bool:
        if not self.tokens:
            return True
        return token is not None and any(hmac.compare_digest(token.encode(), known.encode()) for known in self.tokens)

    def connection_token_valid(self, connection: HTTPConnection) -> bool:
        return self.token_valid(presented_token(connection))


def presented_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return connection.query_params.get("token")


def is_json(content_type: str) -> bool:
    return bool(JSON_TYPES.match(content_type.strip()))


class RedactTokens(logging.Filter):
    """Rewrites `token=...` in log records (uvicorn's access log writes whole request lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(arg, str) and "token=" in arg.lower()
                                                  for arg in record.args):
            record.args = tuple(TOKEN_IN_TEXT.sub(r"\1***", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = TOKEN_IN_TEXT.sub(r"\1***", record.msg)
        return True


def redact_tokens_in_logs() -> None:
    """Install the filter on the loggers that write request lines (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
