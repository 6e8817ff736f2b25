"""What is checked before Ray starts, so that a server that cannot run says why in one line and exits."""

from __future__ import annotations

import contextlib
import os
import socket
from urllib.parse import urlsplit

from server.config import Settings, SettingsError
from server.raysetup import TOKEN_FILE, auth_token

CHECK_TIMEOUT = 3.0
AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"


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


def port_or_another(port: int) -> int:
    """`port` if it is free on loopback, else a free one (another Ray on this machine may hold Ray's ports)."""
    if _free(port):
        return port
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
        raise SettingsError(f"cannot reach the job store at {settings.store_shown} (AMI_STORE): {exc}") from None
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
    join_securely(address)


def join_securely(address: str) -> None:
    """Ask the cluster's GCS whether it wants a token; if it does, find one the way Ray does (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), check that the cluster takes it, and put this driver in token mode.

    Ray's driver never switches to token mode by itself when given an address: it retries for 20 s and fails
    with a traceback. An open cluster is joined as it is, whatever token files this machine holds."""
    if _gcs_answer(address, token=None) != "unauthenticated":
        return  # an open cluster: a driver in token mode joins it too
    mode = os.environ.get(AUTH_MODE_VARIABLE, "").lower()
    if mode not in ("", "token"):
        raise SettingsError(f"the Ray cluster at {address} (RAY_ADDRESS) requires a token, but "
                            f"{AUTH_MODE_VARIABLE}={mode}: set {AUTH_MODE_VARIABLE}=token and give it the head's token")
    token, source = auth_token()
    if not token:
        raise SettingsError(f"the Ray cluster at {address} (RAY_ADDRESS) requires a token: set RAY_AUTH_TOKEN, or copy "
                            f"the head's ~/.ray/auth_token to {TOKEN_FILE} (or to RAY_AUTH_TOKEN_PATH)")
    if _gcs_answer(address, token=token) == "unauthenticated":
        raise SettingsError(f"the Ray cluster at {address} (RAY_ADDRESS) refused the token from {source}: "
                            f"give it the head's token (its ~/.ray/auth_token)")
    _enable_token_mode()


def _gcs_answer(address: str, token: str | None) -> str:
    """"ok" or "unauthenticated", from one cheap call (GetClusterId); any other answer is a SettingsError."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(),  # type: ignore[attr-defined]
                              timeout=CHECK_TIMEOUT, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "unauthenticated"
            said = " ".join(str(exc.details()).split())[:200]  # one line, whatever the other end sent
            raise SettingsError(f"{address} (RAY_ADDRESS) does not answer as a Ray cluster: "
                                f"{exc.code().name} {said}") from None
    return "ok"


def _enable_token_mode() -> None:
    """Token mode for this process and the Ray it starts, as Ray itself turns it on for a new local cluster."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    _enable_token_auth()  # sets RAY_AUTH_MODE=token and makes Ray read its config again
    AuthenticationTokenLoader.instance().reset_cache()
