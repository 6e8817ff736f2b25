"""What is checked before Ray starts, so that a server that cannot run says why in one line and exits."""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit

from server.config import Settings, SettingsError

CHECK_TIMEOUT = 3.0


def listen_socket(settings: Settings) -> socket.socket:
    """The server's listening socket, bound now: Ray's own processes take ephemeral ports once it starts,
    and have been seen taking the very port the server was about to bind."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {settings.host}:{settings.port} (AMI_HOST, AMI_PORT): "
                            f"{exc.strerror or exc}") from None
    return sock


def free_dashboard_port(settings: Settings) -> int:
    """The embedded dashboard's port, or a free one when another program (another Ray) holds it."""
    if _free(settings.dashboard_port):
        return settings.dashboard_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_store(settings: Settings) -> None:
    if not settings.store.startswith(("redis://", "rediss://", "unix://")):
        return
    import redis

    client = redis.Redis.from_url(settings.store, socket_connect_timeout=CHECK_TIMEOUT, socket_timeout=CHECK_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SettingsError(f"cannot reach the job store at {settings.store} (AMI_STORE): {exc}") from None
    finally:
        client.close()


def check_ray_address(settings: Settings) -> None:
    """A cluster address of the host:port form must answer; `ray://` and `auto` are left to Ray."""
    address = settings.ray_address
    if not address or "://" in address or address == "auto":
        return
    parts = urlsplit(f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise SettingsError(f"RAY_ADDRESS must be host:port, ray://host:port or auto, not {address!r}")
    try:
        with contextlib.closing(socket.create_connection((host, port), CHECK_TIMEOUT)):
            pass
    except OSError as exc:
        raise SettingsError(f"cannot reach the Ray cluster at {address} (RAY_ADDRESS): {exc.strerror or exc}") from None
