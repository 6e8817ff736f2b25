"""The Starlette application: routes, and the services that live for the app's lifetime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from actors import JobKind, all_kinds
from server import rest
from server.config import Settings
from server.dispatcher import Dispatcher
from server.jobs import Job, JobTable
from server.raysetup import RayInfo, dashboard_sign_in, ray_session
from server.session import Session

log = logging.getLogger("server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class Services:
    """What every request handler shares: settings, kinds, the job table and the dispatcher."""

    def __init__(self, settings: Settings, ray_info: RayInfo) -> None:
        self.settings = settings
        self.ray = ray_info
        self.kinds: dict[str, JobKind] = {
            name: kind for name, kind in all_kinds().items() if not kind.optional or settings.enable_echo
        }
        self.table = JobTable(settings.max_finished_jobs, settings.result_ttl)
        self.dispatcher = Dispatcher(settings, self.table, self.kinds)
        self._kinds_frame = {
            "type": "kinds",
            "kinds": [
                {"kind": kind.name, "description": kind.description, "schema": kind.schema, "example": kind.example}
                for kind in self.kinds.values()
            ],
        }

    def kinds_frame(self, ref: str | None) -> dict[str, Any]:
        return dict(self._kinds_frame, ref=ref) if ref is not None else self._kinds_frame

    def new_job(self, kind: str, args: dict[str, Any], ref: str | None = None) -> Job:
        return self.table.add(Job(kind, args, ref))

    def start_job(self, job: Job) -> None:
        self.dispatcher.submit(job)


@asynccontextmanager
async def services_context(settings: Settings) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        ray_info = stack.enter_context(ray_session(settings))
        services = Services(settings, ray_info)
        services.dispatcher.start()
        stack.push_async_callback(services.dispatcher.close)
        yield services


def create_app(settings: Settings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with services_context(settings) as services:
            app.state.services = services
            yield

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await Session(websocket, websocket.app.state.services).serve()

    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        return JSONResponse({"dashboard_url": services.ray.dashboard_url, "kinds": sorted(services.kinds)})

    routes = [
        Route("/", index),
        Route("/config.json", config),
        WebSocketRoute("/ws", websocket_endpoint),
        *rest.routes,
        Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def announce(settings: Settings, services: Services) -> None:
    """Tell the person who started the server where to go; printed once the socket is listening."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    lines = [
        f"Page:      http://{host}:{settings.port}/",
        f"Socket:    ws://{host}:{settings.port}/ws",
    ]
    if services.ray.dashboard_url:
        lines.append(f"Dashboard: {services.ray.dashboard_url} ({dashboard_sign_in()})")
    lines.append(f"Ray:       {services.ray.address}; kinds: {', '.join(sorted(services.kinds))}")
    print("\n".join(lines), flush=True)
