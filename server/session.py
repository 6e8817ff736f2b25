"""One WebSocket connection: frames in, requests served, frames out in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from server.buckets import refilled, wait_ms
from server.errors import CloseCode, ErrorCode, RequestError, refusals_answered
from server.jobs import Job
from server.protocol import (
    Auth,
    Cancel,
    Done,
    Help,
    Kinds,
    Ping,
    Request,
    Status,
    Submit,
    Watch,
    accepted_frame,
    authorized_frame,
    encode,
    error_frame,
    help_frame,
    parse_request,
    pong_frame,
    status_frame,
)
from server.services import Services
from server.tenants import Tenant

log = logging.getLogger("server.session")

ROOM_WAIT = 5.0  # seconds a `watch` waits for the client to read once half the outbox limit is queued
BURST_SECONDS = 5.0  # the frame budget's burst: this many seconds' worth of AMI_FRAMES_PER_S
FLOOD_GRACE = 5.0  # seconds a connection may stay over its budget after its first `rate_limited`
FLOOD_GAP = 1.0  # a second without a refusal ends a run of them: the client waited as told
FRAMES_PER_TURN = 16  # frames one connection handles before it lets the event loop serve the others
# Refusing costs a parse and an answer: a connection over its budget is read no faster than this, so a flood
# waits in its own socket buffers (and then its sender's) instead of taking the server's CPU from the others.
REFUSALS_PER_S = 1000
NEEDS_TOKEN = ("this server needs a token: send {\"op\":\"auth\",\"token\":\"...\"} (or 'auth TOKEN') first, or "
               "connect with an Authorization: Bearer header")


Item = tuple[str, int] | int | None  # a frame and its size in bytes, a close code, or the end


class Session:
    """Serves one socket. `push` never blocks: frames queue for a writer task, so a slow client
    slows only itself, and the bytes it leaves unread are capped (close 4008 past the cap).

    An idle connection holds no queue, no writer task and no event: they exist only while frames wait to
    be sent, so thousands of idle sockets cost what uvicorn and the socket cost, little more (slots, and no
    set of watched jobs until it watches one).
    """

    __slots__ = ("_budget", "_budget_at", "_closer", "_failed", "_limited_since", "_refused_at", "_room", "_writer",
                 "closed", "done", "outbox", "queued", "saving", "services", "tenant", "watching", "websocket")

    def __init__(self, websocket: WebSocket, services: Services, tenant: Tenant | None) -> None:
        self.websocket = websocket
        self.services = services
        self.tenant = tenant  # who this client is; None until an `auth` frame presents a valid token
        self.outbox: deque[Item] | None = None  # frames waiting for the writer, while there are any
        self.queued = 0  # bytes in the outbox
        self.watching: set[Job] | None = None  # the jobs it waits for: a set once it waits for one
        self.saving = 0  # submissions admitted whose save has not answered yet
        self.done = False  # the client said `done`: close (1000) once nothing it waits for is left
        self.closed = False
        self._writer: asyncio.Task[None] | None = None  # runs while the outbox has frames
        self._room: asyncio.Future[None] | None = None  # resolved once the outbox is at most half full
        self._closer: asyncio.Task[None] | None = None
        # Frames it may send now (a token bucket) and when it was last topped up (loop time): full at the first frame,
        # from shared constants (a float of its own per idle socket costs 24 bytes each).
        self._budget = math.inf
        self._budget_at = 0.0
        self._limited_since: float | None = None  # the first `rate_limited` of the current run of them
        self._refused_at = 0.0  # the last one: a run ends after FLOOD_GAP seconds without a refusal
        self._failed = False  # a frame raised unexpectedly: logged with its traceback once per connection

    @property
    def limit(self) -> int:
        """Bytes this client may leave unread (AMI_MAX_OUTBOX_BYTES)."""
        return self.services.settings.max_outbox_bytes

    @property
    def authorized(self) -> bool:
        return self.tenant is not None

    async def serve(self) -> None:
        await self.websocket.accept()
        deadline = None
        if not self.authorized:
            timeout = self.services.settings.auth_timeout
            deadline = asyncio.get_running_loop().call_later(timeout, self._refuse, None)
        loop = asyncio.get_running_loop()
        handled = refused = 0
        try:
            while not self.closed:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                # Frames already queued are received without suspending: a flooding socket must let others run.
                handled += 1
                if handled >= FRAMES_PER_TURN:
                    handled = 0
                    await asyncio.sleep(0)
                if not self._within_budget(loop.time(), message.get("text")):
                    refused += 1
                    if refused % FRAMES_PER_TURN == 0:
                        await asyncio.sleep(FRAMES_PER_TURN / REFUSALS_PER_S)
                    continue
                text = message.get("text")
                if text is None:
                    self.push(error_frame(ErrorCode.BAD_REQUEST, "binary frames are not supported; send text"))
                else:
                    await self.receive_text(text)
        except WebSocketDisconnect:
            pass
        finally:
            if deadline is not None:
                deadline.cancel()
            self.closed = True
            self.services.sessions.discard(self)
            for job in self.watching or ():
                job.watchers.pop(self, None)
            self.watching = None
            if self._writer is not None:  # let it send what is queued (or find the client gone)
                self._enqueue(None)
                await asyncio.wait([self._writer])
            if self._closer is not None:
                await self._closer

    def _within_budget(self, now: float, text: str | None) -> bool:
        """Spend one frame of the budget (AMI_FRAMES_PER_S, a burst of BURST_SECONDS' worth); else answer
        `rate_limited`, and close a connection still over budget FLOOD_GRACE seconds after the first one."""
        rate = self.services.settings.frames_per_s
        budget = refilled(self._budget, self._budget_at, now, rate, rate * BURST_SECONDS)
        self._budget_at = now
        if budget >= 1.0:
            self._budget = budget - 1.0
            return True
        self._budget = budget
        if self._limited_since is None or now - self._refused_at > FLOOD_GAP:
            self._limited_since = now  # a new run of refusals: a client that paces its retries is not refused again
        elif now - self._limited_since > FLOOD_GRACE:
            if not self.closed:
                log.info("closing a connection that kept sending over its frame budget (%g frames/s)", rate)
                self.closed = True
                self.services.metrics.refused("flooding")
                self._enqueue(CloseCode.FLOODING)
            return False
        self._refused_at = now
        wait = wait_ms(budget, rate)
        self.services.metrics.refused("rate_limited")
        self.push(error_frame(ErrorCode.RATE_LIMITED, f"more than {rate:g} frames a second; this frame was not "
                                                      f"served: send it again in {wait} ms",
                              _ref_of(text), retry_after_ms=wait))
        return False

    def _enqueue(self, item: Item) -> None:
        if self.outbox is None:
            self.outbox = deque()
        self.outbox.append(item)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            while outbox:
                item = outbox.popleft()
                if item is None:
                    return
                if isinstance(item, int):
                    await self._close(CloseCode(item))
                    return
                text, size = item
                self.queued -= size
                if self._room is not None and self.queued <= self.limit // 2:
                    self._room.set_result(None)
                    self._room = None
                try:
                    await self.websocket.send_text(text)
                except (WebSocketDisconnect, RuntimeError, OSError):  # uvicorn's ClientDisconnected is an OSError
                    self.closed = True  # the client left; the reader sees it too
                    return
                except Exception:
                    log.exception("sending a frame failed; closing the connection")
                    self.closed = True
                    await self._close(CloseCode.INTERNAL)
                    return
        finally:  # nothing is awaited between the last check and here: a push now starts a new writer
            self._writer = None
            if not outbox:
                self.outbox = None

    async def _close(self, code: CloseCode) -> None:
        with contextlib.suppress(Exception):  # already closed or gone: nothing left to tell the client
            await self.websocket.close(code, code.reason)

    def push(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        text = encode(frame)
        size = len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
        if self.queued and self.queued + size > self.limit:
            self._cut_off()
            return
        self.queued += size
        self.services.metrics.frames_out.inc()
        self._enqueue((text, size))

    def _refuse(self, ref: str | None) -> None:
        """No valid token: say so, then close with 4001 once that is sent."""
        if self.authorized or self.closed:
            return
        self.push(error_frame(ErrorCode.UNAUTHORIZED, NEEDS_TOKEN, ref))
        self.closed = True
        self._enqueue(CloseCode.UNAUTHORIZED)

    def _cut_off(self) -> None:
        """Drop what a client that does not read left queued, and close with 4008.

        The writer may be stuck sending to a client that reads nothing: it is cancelled, so the close
        does not wait behind it (the close handshake then times out and the transport is aborted).
        """
        log.warning("closing a connection that left more than %d bytes unread", self.limit)
        self.closed = True
        if self.outbox is not None:
            self.outbox.clear()
        self.queued = 0
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.create_task(self._close(CloseCode.TOO_SLOW))

    async def _make_room(self) -> None:
        """Answers a client asked for wait for it to read what it already has; a client that reads
        nothing for ROOM_WAIT seconds while asking for more is cut off."""
        if self.queued <= self.limit // 2:
            return
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._room), ROOM_WAIT)
        except TimeoutError:
            if not self.closed:
                self._cut_off()

    def forget(self, job: Job) -> None:
        if self.watching is not None:
            self.watching.discard(job)
        self._close_if_done()

    def _close_if_done(self) -> None:
        """After `done`: once every result this connection waits for is queued, close behind them with 1000."""
        if self.done and not self.closed and not self.watching and not self.saving:
            self.closed = True
            self._enqueue(CloseCode.NORMAL)

    @property
    def unfinished(self) -> int:
        """Jobs this connection submitted or watches that have not ended (its limit counts them)."""
        return len(self.watching or ())

    async def receive_text(self, text: str) -> None:
        self.services.metrics.frames_in.inc()
        limit = self.services.settings.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):  # UTF-8: <= 4 bytes a char
            self.push(error_frame(ErrorCode.TOO_LARGE, f"frame larger than {limit} bytes"))
            return
        request: Request | None = None
        try:
            request = parse_request(text)
            if not self.authorized and not isinstance(request, Auth | Ping | Help):
                raise RequestError(ErrorCode.UNAUTHORIZED, NEEDS_TOKEN, request.ref)
            if self.done and isinstance(request, Submit | Watch | Cancel):
                raise RequestError(ErrorCode.BAD_REQUEST, "this connection said 'done': it closes once its results "
                                                          "are in; open another to do more", request.ref)
            await self.handle(request)
        except RequestError as exc:
            self.push(error_frame(exc.code, exc.message, exc.ref, exc.job, exc.retry_after_ms))
        except Exception:  # a bug met by one frame: answer it, keep the connection, tell the operator once
            if not self._failed:
                self._failed = True
                log.exception("a frame raised unexpectedly; answered with 'internal'")
            ref = request.ref if request is not None else None
            self.push(error_frame(ErrorCode.INTERNAL, "the server failed on this frame; it was not served "
                                                      "(the operator's log says why)", ref))

    async def handle(self, request: Request) -> None:
        services = self.services
        match request:
            case Submit(kind, args, ref, priority):
                self.submit(kind, args, ref, priority)  # no await: a socket's submissions are saved in batches
            case Watch(jobs, ref, seen):
                for job_id in jobs:
                    await self._make_room()
                    if self.closed:
                        return
                    try:
                        self._watch(await self._job(job_id, ref), ref, (seen or {}).get(job_id, 0))
                    except RequestError as exc:
                        self.push(error_frame(exc.code, exc.message, exc.ref, exc.job))
            case Status(job_id, ref):
                job = await self._job(job_id, ref)
                self.push(status_frame(job, ref, services.dispatcher.position(job)))
            case Cancel(job_id, ref):
                job = await self._job(job_id, ref)
                self._watch(job, ref)  # the cancelled (or earlier) result goes to the canceller too
                services.cancel(job)
            case Kinds(ref):
                self.push(services.kinds_frame(ref))
            case Ping(ref):
                self.push(pong_frame(ref))
            case Help(ref):
                self.push(help_frame(ref))
            case Done():
                self.done = True
                self._close_if_done()
            case Auth(token, ref):
                self.tenant = services.access.connection_tenant(self.websocket, token)
                if self.authorized:
                    self.push(authorized_frame(ref))
                else:
                    self._refuse(ref)

    def submit(self, kind: str, args: dict[str, Any], ref: str | None, priority: int = 5) -> None:
        with refusals_answered(ref):
            job, saved = self.services.admit(kind, args, ref, origin=self, tenant=self.tenant, priority=priority)

        def answer(done: asyncio.Future[bool]) -> None:
            self.saving -= 1
            if not done.result():
                self.push(error_frame(ErrorCode.BUSY, "the job store cannot save jobs right now; try again", ref))
            else:
                self.push(accepted_frame(job, ref, self.services.dispatcher.position(job)))
                self._watch(job, ref)
            self._close_if_done()

        self.saving += 1
        saved.add_done_callback(answer)

    def _watch(self, job: Job, ref: str | None, seen: int = 0) -> None:
        if self.closed:
            return
        if not job.published:
            if self.watching is None:
                self.watching = set()
            self.watching.add(job)
        self.services.table.watch(job, self, ref, seen)

    async def _job(self, job_id: str, ref: str | None) -> Job:
        job = await self.services.table.lookup(job_id)
        if job is None or not self.services.access.may_see(self.tenant, job):  # another tenant's: as if none
            raise RequestError(ErrorCode.NOT_FOUND, f"no job {job_id!r}", ref, job_id)
        return job


def _ref_of(text: str | None) -> str | None:
    """The `ref` of a frame that will not be served, so its refusal still echoes it; cheap, and never raises."""
    if not text or '"ref"' not in text or len(text) > 4096:
        return None
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    ref = frame.get("ref") if isinstance(frame, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 128 and ref.isprintable() else None
