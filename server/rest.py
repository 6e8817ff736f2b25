"""HTTP endpoints: jobs over REST, the old polling API kept for old clients, and operator views."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors import InvalidArgs
from server.access import is_json
from server.errors import ErrorCode, RequestError, http_status, refusals_answered
from server.jobs import TERMINAL, Job, JobState
from server.protocol import load_json, parse_priority
from server.services import Services
from server.tenants import Tenant

log = logging.getLogger("server.rest")

POOLS_WAIT = 5.0  # seconds /pools waits for starting actors

CELERY_STATES = {
    JobState.QUEUED: "PENDING",
    JobState.RUNNING: "PENDING",  # Celery without track_started never said STARTED; AMI_OLD_API_STARTED does
    JobState.SUCCEEDED: "SUCCESS",
    JobState.FAILED: "FAILURE",
    JobState.CANCELLED: "REVOKED",
}
TRUE_WORDS = {"1", "on", "t", "true", "y", "yes"}  # pydantic 1's bool parsing, as the old models had it
FALSE_WORDS = {"0", "off", "f", "false", "n", "no"}
OLD_DATE = re.compile(r"^\d{2}-\d{2}-\d{4}$")  # the old client's DD-MM-YYYY


class CallbackLogger:
    """The old API's `callback: true`: log the result when it arrives."""

    def push(self, frame: dict[str, Any]) -> None:
        log.info("callback: job %s %s: %s", frame["job"], frame["status"],
                 json.dumps(frame.get("result", frame.get("error"))))

    def forget(self, job: Job) -> None:
        pass


Endpoint = Callable[[Request], Awaitable[Response]]
ANYONE, CLIENTS, OPERATORS = "anyone", "clients", "operators"  # who may call a route (`requires`)


def requires(who: str) -> Callable[[Endpoint], Endpoint]:
    """Declare, once per route, who may call it (as Starlette's `requires` does): `CLIENTS` need a valid token when
    the server has tokens (else 401); `OPERATORS` also need an operator's, once AMI_OPERATOR_TOKENS is set (else 403);
    `ANYONE` is for probes, which send no token (they learn why only with an operator's)."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def checked(request: Request) -> Response:
            if who != ANYONE and not request.app.state.services.access.connection_token_valid(request):
                return _problem(401, "unauthorized", "a valid token is required (Authorization: Bearer or ?token=)")
            if who == OPERATORS and not _may_operate(request):
                return _problem(403, "forbidden", "this endpoint is for operators (a token of AMI_OPERATOR_TOKENS)")
            return await endpoint(request)

        checked.access = who  # type: ignore[attr-defined]  # read by the test that every route declares one
        return checked

    return decorate


def _tenant(request: Request) -> Tenant | None:
    return request.app.state.services.access.connection_tenant(request)


def _may_operate(request: Request) -> bool:
    """Whether the requester may use the operator endpoints (and see why /healthz and /readyz say what they say)."""
    return bool(request.app.state.services.access.may_operate(_tenant(request)))


async def _visible_job(request: Request, job_id: str) -> Job | None:
    """The job, if the requester may see it: another tenant's job is answered as one that does not exist."""
    services = request.app.state.services
    job = await services.table.lookup(job_id)
    return job if job is not None and services.access.may_see(_tenant(request), job) else None


def cross_site(request: Request) -> JSONResponse | None:
    """A refusal of a write a web page may have sent on a visitor's behalf (CSRF), else None.

    Browsers send `Origin` with every POST; a foreign one is refused (403). A body that is not JSON is
    refused (415) unless it comes from an allowed origin: HTML forms and `text/plain` are how a page sends
    a cross-site write without asking first. Requests without `Origin` and with a JSON body, or none
    (curl, scripts, the old clients), are served as before.
    """
    access = request.app.state.services.access
    origin = request.headers.get("origin")
    if origin is not None and not access.origin_allowed(origin):
        return _problem(403, "forbidden", f"requests from the web page at {origin[:100]} are not allowed here")
    content_type = request.headers.get("content-type")
    if content_type and not is_json(content_type) and origin is None:
        return _problem(415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)")
    return None


def _problem(status: int, code: str, message: str, loc: tuple[str, ...] = ("body",),
             retry_after_ms: int | None = None) -> JSONResponse:
    """An error body; a 422 also carries FastAPI's `detail` list, which old clients may read; a 429 says when to
    try again (`Retry-After` in whole seconds, `retry_after_ms` in the body)."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    headers = None
    if retry_after_ms is not None:
        body["error"]["retry_after_ms"] = retry_after_ms
        headers = {"Retry-After": str(max(1, -(-retry_after_ms // 1000)))}
    if status == 422:
        body["detail"] = [{"loc": list(loc), "msg": message, "type": f"value_error.{code}"}]
    return JSONResponse(body, status_code=status, headers=headers)


def _old_str(body: dict[str, Any], name: str) -> str:
    """A string field of the old models: numbers were turned into strings (pydantic 1)."""
    value = body.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    message = "field required" if value is None else "str type expected"
    raise RequestError(ErrorCode.INVALID_ARGS, message, loc=("body", name))


def _old_bool(body: dict[str, Any], name: str) -> bool:
    """A bool field of the old models (default false): "false", "0", "no" and "off" were false."""
    value = body.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise RequestError(ErrorCode.INVALID_ARGS, "value could not be parsed to a boolean", loc=("body", name))


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object in a request body no larger than a frame may be, read without holding more."""
    limit = request.app.state.services.settings.max_frame_bytes
    too_large = RequestError(ErrorCode.TOO_LARGE, f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = load_json(b"".join(chunks))
    if not isinstance(body, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


async def _create(services: Services, tenant: Tenant | None, kind_name: Any, args: Any, callback: bool = False,
                  loc: tuple[str, ...] = ("body", "args"), priority: int = 5) -> Job:
    if not isinstance(args, dict):
        raise RequestError(ErrorCode.BAD_REQUEST, "'args' must be a JSON object", loc=loc)
    with refusals_answered(loc=loc):
        job = await services.admit_saved(kind_name, args, tenant, priority)
    if callback:
        services.table.watch(job, CallbackLogger())
    return job


Maker = Callable[[Services, Tenant | None, dict[str, Any]], Awaitable[JSONResponse]]


def _handler(make: Maker) -> Endpoint:
    """A POST endpoint for clients: the body read (bounded) and parsed, refusals answered as HTTP errors."""

    @requires(CLIENTS)
    async def endpoint(request: Request) -> Response:
        if (refused := cross_site(request)) is not None:
            return refused
        try:
            return await make(request.app.state.services, _tenant(request), await _body(request))
        except RequestError as exc:
            return _problem(http_status(exc.code), exc.code, exc.message, exc.loc, exc.retry_after_ms)
        except ClientDisconnect:  # the client hung up, or the body missed its deadline: nobody to answer
            log.info("%s %s: the client left before sending the whole body", request.method, request.url.path)
            return JSONResponse(None, status_code=400)

    return endpoint


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat()


async def post_job(services: Services, tenant: Tenant | None, body: dict[str, Any]) -> JSONResponse:
    priority = parse_priority(body.get("priority", 5))
    job = await _create(services, tenant, body.get("kind"), body.get("args", {}), priority=priority)
    return JSONResponse({"job": job.id}, status_code=201)


@requires(CLIENTS)
async def get_job(request: Request) -> JSONResponse:
    job = await _visible_job(request, request.path_params["job"])
    if job is None:
        return _problem(404, "not_found", "no such job")
    state = job.visible_state
    body: dict[str, Any] = {"job": job.id, "kind": job.kind, "state": str(state)}
    if state is JobState.SUCCEEDED:
        body["result"] = job.result
    elif state in TERMINAL and job.error is not None:
        body["error"] = job.error
    body["created_at"] = _iso(job.created_at)
    body["finished_at"] = _iso(job.finished_at if job.published else None)
    return JSONResponse(body)


async def post_audio_length(services: Services, tenant: Tenant | None, body: dict[str, Any]) -> JSONResponse:
    url, callback = _old_str(body, "audio_url"), _old_bool(body, "callback")
    job = await _create(services, tenant, "audio.length", {"url": url}, callback, ("body", "audio_url"))
    return JSONResponse({"id": job.id}, status_code=201)


async def post_euro_results(services: Services, tenant: Tenant | None, body: dict[str, Any]) -> JSONResponse:
    date, callback = _old_str(body, "draw_date"), _old_bool(body, "callback")
    if OLD_DATE.match(date) and _is_date(date):
        try:
            services.kinds["euro.results"].check({"date": date})
        except InvalidArgs as exc:
            # The old API took any well-formed date (201) and its task failed later: old clients count on the id.
            job = await services.admit_failed("euro.results", {"date": date}, tenant, exc.error)
            return JSONResponse({"id": job.id}, status_code=201)
    job = await _create(services, tenant, "euro.results", {"date": date}, callback, ("body", "draw_date"))
    return JSONResponse({"id": job.id}, status_code=201)


def _old_result(job: Job) -> Any:
    if job.visible_state is not JobState.SUCCEEDED:
        return None
    if job.kind == "audio.length":
        return {"audio_length": job.result["duration"]}
    if job.kind == "euro.results":  # the old worker read the page's ballsDrawn list: the balls in drawn order
        balls = job.result.get("drawn_order") or job.result
        return [*balls["numbers"], *balls["stars"]]
    return job.result


def _is_date(text: str) -> bool:
    try:
        dt.datetime.strptime(text, "%d-%m-%Y")
    except ValueError:
        return False
    return True


@requires(CLIENTS)
async def get_task(request: Request) -> JSONResponse:
    services = request.app.state.services
    task = request.path_params["task"]
    job = await _visible_job(request, task)
    if job is None:  # the old body's shape, with a status no old client waits on
        return JSONResponse({"id": task, "status": "NOT_FOUND", "error": "no such task", "result": None},
                            status_code=404)
    state = job.visible_state
    started = state is JobState.RUNNING and services.settings.old_api_started
    body = {
        "id": job.id,
        "status": "STARTED" if started else CELERY_STATES[state],
        "error": job.error["message"] if job.error and state in TERMINAL else None,
        "result": _old_result(job),
    }
    return JSONResponse(body, status_code=200 if state in TERMINAL else 202)


@requires(OPERATORS)
async def get_pools(request: Request) -> JSONResponse:
    services = request.app.state.services
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(services.dispatcher.ready(), POOLS_WAIT)  # node ids are known once actors start
    return JSONResponse({"pools": [pool.describe() for pool in services.dispatcher.pools.values()]})


@requires(ANYONE)
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve jobs: Ray reachable, the store writable, every pool's actors started (503 if not). Probes
    send no token, so anyone gets the status; why it is not ready is for operators (anyone, without tokens)."""
    reasons = request.app.state.services.readiness()
    body: dict[str, Any] = {"ready": not reasons}
    if _may_operate(request):
        body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)


@requires(OPERATORS)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.services.metrics.text(), media_type=CONTENT_TYPE_LATEST)


@requires(ANYONE)
async def healthz(request: Request) -> JSONResponse:
    """Alive: the process answers and its store is usable (503 if not); the reason is for operators."""
    problem = request.app.state.services.store.health()
    if problem is not None:
        body: dict[str, Any] = {"ok": False}
        if _may_operate(request):
            body["reason"] = problem
        return JSONResponse(body, status_code=503)
    return JSONResponse({"ok": True})


routes = [
    Route("/jobs", _handler(post_job), methods=["POST"]),
    Route("/jobs/{job}", get_job),
    Route("/audio/length", _handler(post_audio_length), methods=["POST"]),
    Route("/euro/results", _handler(post_euro_results), methods=["POST"]),
    Route("/task/{task}", get_task),
    Route("/pools", get_pools),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]
