"""Who may use the server: browser origins (against cross-site WebSocket hijacking) and client tokens."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from server.config import Settings


def origin_allowed(connection: HTTPConnection, settings: Settings) -> bool:
    """Programs send no Origin; browsers do, and may only come from this server's own page or an allowed one."""
    origin = connection.headers.get("origin")
    if origin is None or "*" in settings.allowed_origins or origin in settings.allowed_origins:
        return True
    return urlsplit(origin).netloc.lower() == connection.headers.get("host", "").lower()


def presented_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return connection.query_params.get("token")


def token_valid(connection: HTTPConnection, settings: Settings) -> bool:
    if not settings.tokens:
        return True
    token = presented_token(connection)
    return token is not None and any(hmac.compare_digest(token, known) for known in settings.tokens)
