"""The Starlette application: routes and middleware; the services live in `services.py`."""

from __future__ import annotations

import logging
import resource
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from server import rest
from server.access import Access, header, presented_token
from server.config import Settings, SettingsError
from server.dispatcher import Dispatcher
from server.errors import CloseCode, ErrorCode
from server.guard import ConnectionGuard, ForwardedLimit, HostCheck, guarded_protocols
from server.protocol import encode, error_frame
from server.raysetup import dashboard_sign_in, no_ray, ray_session, record_once_ready, report_metrics
from server.services import DispatcherFactory, Services, services_context
from server.session import Session
from server.store import Store

log = logging.getLogger("server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
UNAUTHORIZED = "the token presented is not valid"


class RevalidatedFiles(StaticFiles):
    """The page's files, which browsers may keep but must revalidate (ETag), so a new version shows at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(settings: Settings, store: Store | None = None, make_dispatcher: DispatcherFactory | None = None
               ) -> Starlette:
    """The app; `store` and `make_dispatcher` replace the configured store and Ray's pools (tests)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Ray (unless the pools are fakes), then the services; stopped in reverse. A refusal to start once Ray is
        up (SettingsError: no node can take a kind's actors) is kept in `app.state.startup_error` for the CLI."""
        try:
            async with AsyncExitStack() as stack:
                factory: DispatcherFactory
                if make_dispatcher is None:
                    ray_info, factory = stack.enter_context(ray_session(settings)), Dispatcher
                else:
                    ray_info, factory = no_ray(settings), make_dispatcher
                services = await stack.enter_async_context(services_context(settings, ray_info, store, factory))
                if ray_info.address != "none":
                    services.spawn(report_metrics(services.metrics))
                if ray_info.processes_file is not None:
                    services.spawn(record_once_ready(services.dispatcher.ready, ray_info.processes_file))
                app.state.services = services
                guard.on_refuse = services.metrics.refused
                yield
        except SettingsError as exc:
            app.state.startup_error = str(exc)
            raise

    def websocket_endpoint(websocket: WebSocket) -> Awaitable[None]:
        # Not a coroutine: an idle socket's chain of awaits holds the session's frame, not this one's too.
        services: Services = websocket.app.state.services
        access = services.access
        if not access.origin_allowed(header(websocket, b"origin")):
            return websocket.close(CloseCode.FORBIDDEN)  # before accepting: the handshake gets HTTP 403
        token = presented_token(websocket)
        if token is not None and not access.token_valid(token):
            return refuse_token(websocket)
        # No token at all: the first frames may present one (`auth`), for clients that cannot set headers.
        session = Session(websocket, services, access.connection_tenant(websocket))
        services.sessions.add(session)  # Session.serve takes it out when the socket ends
        return session.serve()

    async def refuse_token(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(encode(error_frame(ErrorCode.UNAUTHORIZED, UNAUTHORIZED)))
        await websocket.close(CloseCode.UNAUTHORIZED, CloseCode.UNAUTHORIZED.reason)

    @rest.requires(rest.ANYONE)
    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @rest.requires(rest.OPERATORS)
    async def config(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        return JSONResponse({"dashboard_url": services.ray.dashboard_url, "kinds": sorted(services.kinds)})

    routes = [
        Route("/", index),
        Route("/config.json", config),
        WebSocketRoute("/ws", websocket_endpoint),
        *rest.routes,
        Mount("/static", RevalidatedFiles(directory=WEB_DIR), name="static"),
    ]
    # Before any route, handshakes included: a name that is not ours is a DNS rebinding attempt, or a mistake.
    hosts = Access(settings).hosts
    guard = ConnectionGuard(settings.header_timeout, settings.max_connections_per_ip, settings.trusted_proxies)
    middleware = [Middleware(ForwardedLimit, guard=guard),
                  Middleware(HostCheck, allowed_hosts=["*"] if "*" in hosts else hosts)]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.guard = guard
    return app


FILES_KEPT = 300  # open files the server needs besides sockets: Ray's, the store's, the page's
BACKLOG = 4096  # connections the kernel holds before accept (Linux caps it at net.core.somaxconn, 4096 here)


def uvicorn_options(settings: Settings, app: Starlette) -> dict[str, Any]:
    """How uvicorn serves this app, for the CLI and the tests alike."""
    http, ws = guarded_protocols(app.state.guard)
    return {
        "http": http,  # uvicorn's httptools and websockets protocols, with the deadline and the per-address cap
        "ws": ws,
        "proxy_headers": False,  # ForwardedLimit reads X-Forwarded-For, from AMI_TRUSTED_PROXIES only
        "ws_max_size": max(4 * settings.max_frame_bytes, 1024 * 1024),
        # Browsers negotiate deflate whenever it is offered, and its zlib state doubles an idle socket's memory.
        "ws_per_message_deflate": settings.ws_deflate,
        "backlog": BACKLOG,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }


def announce(settings: Settings, services: Services) -> None:
    """Tell the person who started the server where to go; printed once the socket is listening."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    lines = [
        f"Page:      http://{host}:{settings.port}/",
        f"Socket:    ws://{host}:{settings.port}/ws",
    ]
    if services.ray.dashboard_url:
        lines.append(f"Dashboard: {services.ray.dashboard_url} ({dashboard_sign_in()})")
    lines.append(f"Ray:       {services.ray.address}; kinds: {', '.join(sorted(services.kinds))}; "
                 f"store: {settings.store_shown}")
    if services.ray.address == "embedded":
        lines.append(f"Metrics:   http://{host}:{settings.port}/metrics (this server), "
                     f"http://127.0.0.1:{settings.ray_metrics_port}/metrics (Ray's, AMI_RAY_METRICS_PORT)")
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    lines.append(f"Sockets:   up to about {max(files - FILES_KEPT, 0):,} connections (open-file limit {files:,})")
    print("\n".join(lines), flush=True)


def raise_file_limit() -> int:
    """Raise this process's open-file limit to the hard limit (each socket is a file); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
