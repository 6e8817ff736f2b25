"""The Starlette application: routes, and the services that live for the app's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from actors import JobKind, all_kinds
from server import rest
from server.access import Access, presented_token
from server.config import Settings
from server.dispatcher import Dispatcher
from server.errors import CloseCode, ErrorCode
from server.jobs import Job, JobState, JobTable
from server.protocol import encode, error_frame
from server.raysetup import RayInfo, dashboard_sign_in, ray_session, record_processes
from server.session import Session
from server.store import Store, open_store, purge_forever

log = logging.getLogger("server")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
UNAUTHORIZED = "the token presented is not valid"
MAX_RESTARTS = 3  # server restarts a job may live through before it fails instead of running again


class Services:
    """What every request handler shares: settings, kinds, the job store and table, the dispatcher."""

    def __init__(self, settings: Settings, ray_info: RayInfo, store: Store) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.ray = ray_info
        self.store = store
        self.owner = settings.identity
        self.kinds: dict[str, JobKind] = {
            name: kind for name, kind in all_kinds().items() if not kind.optional or settings.enable_echo
        }
        self.table = JobTable(store)
        self.dispatcher = Dispatcher(settings, self.table, self.kinds)
        self._background: set[asyncio.Task[Any]] = set()
        self.sessions: set[Session] = set()
        self._kinds_frame = {
            "type": "kinds",
            "kinds": [
                {"kind": kind.name, "description": kind.description, "schema": kind.schema, "example": kind.example}
                for kind in self.kinds.values()
            ],
        }

    def kinds_frame(self, ref: str | None) -> dict[str, Any]:
        return dict(self._kinds_frame, ref=ref) if ref is not None else self._kinds_frame

    def submit(self, kind: str, args: dict[str, Any], ref: str | None, accepted: Callable[[Job | None], None]) -> Job:
        """Save a new job and start it; call `accepted` once it is saved (with None if it could not be).

        The job starts while the store saves it, so a store round trip is not added to every job. Writes are
        applied in order, so the job's result is saved, and pushed, only after `accepted`.
        """
        self.dispatcher.check_capacity(kind, ref)
        job = self.table.add(Job(kind, args, ref, owner=self.owner))

        def saved(ok: bool) -> None:
            if not ok:
                self.dispatcher.cancel(job)
                self.table.drop(job)
                accepted(None)
                return
            accepted(job)

        self.store.put(job, saved)
        self.run(job)
        return job

    async def submit_async(self, kind: str, args: dict[str, Any]) -> Job | None:
        future: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self.submit(kind, args, None, future.set_result)
        return await future

    def cancel(self, job: Job) -> None:
        if job.remote:
            self.store.request_cancel(job.id)
        else:
            self.dispatcher.cancel(job)

    def cancel_requested(self, job_id: str) -> None:
        """Another server asks to cancel a job; it is ours to cancel if we run it."""
        job = self.table.get(job_id)
        if job is not None and not job.remote:
            self.dispatcher.cancel(job)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def run(self, job: Job) -> None:
        """Send a job to its pool, or finish it at once with the saved result of a cacheable kind."""
        if self.kinds[job.kind].cacheable:
            self.spawn(self._reuse_or_run(job))
        else:
            self.dispatcher.submit(job)

    async def _reuse_or_run(self, job: Job) -> None:
        try:
            result = await self.store.cached(job.kind, job.args)
        except Exception:
            log.exception("the result cache could not be read; running job %s", job.id)
            result = None
        if job.finished:  # cancelled meanwhile
            return
        if result is None:
            self.dispatcher.submit(job)
        else:
            self.table.finish(job, JobState.SUCCEEDED, result=result)

    def _resubmit(self, job: Job) -> Callable[[bool], None]:
        return lambda saved: self.run(job)

    async def recover(self) -> int:
        """Run again the jobs this server had accepted but not finished when it last stopped."""
        jobs = await self.store.unfinished(self.owner)
        for job in jobs:
            job.restarts += 1
            job.state = JobState.QUEUED
            self.table.add(job)
            if job.restarts > MAX_RESTARTS:
                message = f"the server stopped {job.restarts - 1} times while this job ran; giving up"
                self.table.finish(job, JobState.FAILED, error={"code": "worker_lost", "message": message})
            else:
                self.store.put(job, self._resubmit(job))
        if jobs:
            log.info("resubmitted %d jobs left unfinished by the last run", len(jobs))
        return len(jobs)


@asynccontextmanager
async def services_context(settings: Settings, store: Store | None = None) -> AsyncIterator[Services]:
    """Everything the app shares, started in order and stopped in reverse; `store` replaces the configured one."""
    async with AsyncExitStack() as stack:
        ray_info = stack.enter_context(ray_session(settings))
        if store is None:
            store = open_store(settings.store, settings.data_dir, settings.result_ttl, settings.max_finished_jobs)
        await store.open()
        stack.push_async_callback(store.close)
        services = Services(settings, ray_info, store)
        services.dispatcher.start()
        stack.push_async_callback(services.dispatcher.close)
        store.listen(lambda job_id: services.spawn(services.table.remote_finished(job_id)),
                     services.cancel_requested)
        await services.recover()
        services.spawn(purge_forever(store, settings.result_ttl))
        if ray_info.processes_file is not None:
            services.spawn(_record_once_ready(services, ray_info.processes_file))
        stack.callback(lambda: [task.cancel() for task in services._background])
        yield services


async def _record_once_ready(services: Services, path: Path) -> None:
    """Ray starts more processes (workers, agents) as the pools come up: record them too."""
    await services.dispatcher.ready()
    await asyncio.to_thread(record_processes, path)


class RevalidatedFiles(StaticFiles):
    """The page's files, which browsers may keep but must revalidate (ETag), so a new version shows at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with services_context(settings, store) as services:
            app.state.services = services
            yield

    async def websocket_endpoint(websocket: WebSocket) -> None:
        services: Services = websocket.app.state.services
        access = services.access
        if not access.origin_allowed(websocket.headers.get("origin")):
            await websocket.close(CloseCode.FORBIDDEN)  # before accepting: the handshake gets HTTP 403
            return
        token = presented_token(websocket)
        if token is not None and not access.token_valid(token):
            await websocket.accept()
            await websocket.send_text(encode(error_frame(ErrorCode.UNAUTHORIZED, UNAUTHORIZED)))
            await websocket.close(CloseCode.UNAUTHORIZED, "a valid token is required")
            return
        # No token at all: the first frames may present one (`auth`), for clients that cannot set headers.
        session = Session(websocket, services, authorized=access.token_valid(token))
        services.sessions.add(session)
        try:
            await session.serve()
        finally:
            services.sessions.discard(session)

    async def index(request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        if (refused := rest.unauthorized(request)) is not None:
            return refused
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
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=["*"] if "*" in hosts else hosts)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


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
                 f"store: {settings.store}")
    print("\n".join(lines), flush=True)
