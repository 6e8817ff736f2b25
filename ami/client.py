"""An asyncio client of protocol v1, on `websockets`: submit and await results, watch, reconnect.

    async with ami.Client("ws://127.0.0.1:8000/ws", token=None) as client:
        result = await client.submit("euro.results", {"date": "2024-03-26"})
        print(result.status, result.result)

A dropped connection is opened again with backoff and every unfinished job is watched again, so each
result arrives exactly once; answers are matched to requests by `ref`. A job is forgotten once its result is
delivered (to `result()` or `results()`), so a long-lived client holds only what it is still owed; asking for
it again watches it again, and the server sends the result it kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

FINAL_CLOSES = {1000, 1008, 4001}  # done, a refused origin, a refused token: opening again would not help
DELIVERED_KEPT = 4096  # ids of delivered results remembered, so that a second copy of one is dropped


class Error(Exception):
    """Anything this client raises."""


class ConnectionFailed(Error):
    """The server cannot be reached, refused the connection, or closed it for good."""


class Refused(Error):
    """The server answered a request with an `error` frame (`code`: bad_request, invalid_args, busy, ...)."""

    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class Result:
    """A job's one `result` frame."""

    job: str
    kind: str
    status: str  # succeeded, failed or cancelled
    result: Any = None
    error: dict[str, str] | None = None
    elapsed_ms: float | None = None
    frame: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Result:
        return cls(frame["job"], frame.get("kind", ""), frame["status"], frame.get("result"), frame.get("error"),
                   frame.get("elapsed_ms"), frame)


@dataclass(frozen=True)
class Progress:
    """A `progress` frame: what a running job of a streaming kind found since the last one (`seq` 1, 2, ...)."""

    job: str
    kind: str
    seq: int
    data: Any
    frame: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Progress:
        return cls(frame["job"], frame.get("kind", ""), int(frame["seq"]), frame.get("data"), frame)


class Client:
    def __init__(self, url: str, token: str | None = None, *, reconnect: bool = True, max_backoff: float = 10.0,
                 open_timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._refs = (f"c{n}" for n in itertools.count())
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}  # ref -> the frame answering it
        self._results: dict[str, asyncio.Future[Result]] = {}  # job -> its result: owed, or arrived and unclaimed
        self._waiting: Counter[str] = Counter()  # job -> `result()` calls awaiting it
        self._delivered: OrderedDict[str, None] = OrderedDict()  # the last DELIVERED_KEPT jobs delivered
        self._listeners = 0  # `results()` iterators running: results are queued for them only
        self._stream: asyncio.Queue[Result] = asyncio.Queue()
        self._progress: dict[str, asyncio.Queue[Progress]] = {}  # job -> its progress frames not yet taken
        self._seqs: dict[str, int] = {}  # job -> the last progress seq received (sent as `seen` when watching again)
        self._closing = False
        self._failure: Error | None = None
        self._pacing = asyncio.Lock()  # held by the request retrying after `rate_limited`
        self._paced = 0  # requests refused with `rate_limited` and not yet served
        self._interval = 0.0  # seconds between paced retries: the longest retry_after_ms of this episode

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (raises ConnectionFailed), then keep it open until `close`."""
        await self._open()
        self._reader = asyncio.create_task(self._read_forever())

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        self._fail_waiters(ConnectionFailed("the client was closed"))

    # --- requests ----------------------------------------------------------------------------------------

    async def send(self, kind: str, args: dict[str, Any]) -> str:
        """Submit a job; its id once accepted (Refused otherwise). Its result comes to `result()`/`results()`."""
        frame = await self._request({"op": "submit", "kind": kind, "args": args})
        job = str(frame["job"])
        if job not in self._delivered:  # its result may have come (and gone to `results()`) before this answer
            self._results.setdefault(job, asyncio.get_running_loop().create_future())
        return job

    async def submit(self, kind: str, args: dict[str, Any]) -> Result:
        """Submit a job and wait for its result."""
        return await self.result(await self.send(kind, args))

    async def submit_many(self, jobs: Iterable[tuple[str, dict[str, Any]]]) -> list[Result | Refused]:
        """Submit several jobs at once; their results (or refusals) in the order given."""
        async def one(kind: str, args: dict[str, Any]) -> Result | Refused:
            try:
                return await self.submit(kind, args)
            except Refused as refused:
                return refused

        return list(await asyncio.gather(*(one(kind, args) for kind, args in jobs)))

    @property
    def jobs_held(self) -> int:
        """Jobs this client keeps: those it is owed a result for, and results nobody has claimed yet."""
        return len(self._results)

    async def result(self, job: str) -> Result:
        """The result of a job this client submitted or watches (watched again if it was delivered already)."""
        future = self._results.get(job)
        if future is None:
            future = self._results[job] = asyncio.get_running_loop().create_future()
            if job in self._delivered:  # delivered and forgotten: the server keeps it, and sends it again
                self._delivered.pop(job)
                await self._send({"op": "watch", "jobs": [job], "ref": next(self._refs)})
        self._waiting[job] += 1
        try:
            return await asyncio.shield(future)
        finally:
            self._waiting[job] -= 1
            if self._waiting[job] <= 0:
                del self._waiting[job]
                if future.done() and self._results.get(job) is future:
                    self._forget(job)

    async def events(self, job: str) -> AsyncGenerator[Progress | Result, None]:
        """A job's `progress` (streaming kinds) as it comes, then its `Result`, last; nothing missed across a
        reconnect (the watch says which progress it has), nothing twice."""
        progress = self._progress.setdefault(job, asyncio.Queue())
        result = asyncio.ensure_future(self.result(job))
        try:
            while not result.done():
                taken = asyncio.ensure_future(progress.get())
                await asyncio.wait({taken, result}, return_when=asyncio.FIRST_COMPLETED)
                if taken.done():
                    yield taken.result()
                else:
                    taken.cancel()
            while not progress.empty():  # what came before the result, which came last
                yield progress.get_nowait()
            yield result.result()
        finally:
            result.cancel()

    def _forget(self, job: str) -> None:
        self._progress.pop(job, None)
        self._seqs.pop(job, None)
        self._results.pop(job, None)
        self._delivered[job] = None
        while len(self._delivered) > DELIVERED_KEPT:
            self._delivered.popitem(last=False)

    async def watch(self, jobs: Iterable[str]) -> None:
        """Follow jobs (of any connection): their results come to `result()` and `results()`."""
        ids = list(dict.fromkeys(jobs))
        loop = asyncio.get_running_loop()
        for job in ids:
            self._results.setdefault(job, loop.create_future())
        for start in range(0, len(ids), 1000):
            frame: dict[str, Any] = {"op": "watch", "jobs": ids[start:start + 1000], "ref": next(self._refs)}
            seen = {job: self._seqs[job] for job in frame["jobs"] if job in self._seqs}
            await self._send({**frame, "seen": seen} if seen else frame)

    async def status(self, job: str) -> str:
        """`queued`, `running`, `succeeded`, `failed` or `cancelled` (Refused with `not_found` if unknown)."""
        return str((await self.status_frame(job))["state"])

    async def status_frame(self, job: str) -> dict[str, Any]:
        """The server's whole `status` frame: `kind`, `state`, and `position` and `eta_ms` while queued."""
        return await self._request({"op": "status", "job": job})

    async def kinds(self) -> list[dict[str, Any]]:
        """The server's kinds: name, description, args schema, shortcut, form, whether it streams progress."""
        return list((await self._request({"op": "kinds"}))["kinds"])

    async def cancel(self, job: str) -> None:
        await self._send({"op": "cancel", "job": job, "ref": next(self._refs)})

    async def results(self) -> AsyncGenerator[Result, None]:
        """Every result this client receives while this runs, as it arrives."""
        self._listeners += 1
        try:
            while True:
                yield await self._stream.get()
        finally:
            self._listeners -= 1

    # --- the connection ------------------------------------------------------------------------------------

    async def _open(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._ws = await websockets.connect(self.url, additional_headers=headers, max_size=None,
                                                open_timeout=self.open_timeout)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.url}: {exc}") from None
        self._connected.set()

    async def _read_forever(self) -> None:
        attempt = 0
        while not self._closing:
            assert self._ws is not None
            try:
                async for raw in self._ws:
                    attempt = 0
                    self._receive(json.loads(raw))
                code = self._ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
            self._connected.clear()
            if self._closing:
                return
            if not self.reconnect or code in FINAL_CLOSES:
                self._fail_waiters(ConnectionFailed(f"the server closed the connection ({code})"))
                return
            self._fail_answers(ConnectionFailed("the connection dropped before the server answered"))
            while not self._closing:  # open again, with backoff, and watch what is still owed
                await asyncio.sleep(min(self.max_backoff, 0.2 * 2 ** attempt) * (0.8 + 0.4 * random.random()))
                attempt += 1
                try:
                    await self._open()
                    await self.watch([job for job, future in self._results.items() if not future.done()])
                    break
                except ConnectionFailed:
                    continue

    def _receive(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        kind = frame.get("type")
        if kind == "result":
            result = Result.from_frame(frame)
            future = self._results.get(result.job)
            if (future is not None and future.done()) or (future is None and result.job in self._delivered):
                return  # a second copy (watched again after a reconnect): each result arrives once
            if future is None:  # before `send` saw its `accepted`, or watched by `watch`
                future = self._results[result.job] = asyncio.get_running_loop().create_future()
            future.set_result(result)
            if self._listeners:
                self._stream.put_nowait(result)
            if self._listeners or self._waiting[result.job]:
                self._forget(result.job)  # delivered: a waiter holds its future already
            return
        if kind == "progress":
            job = frame.get("job")
            if job in self._results and frame.get("seq", 0) > self._seqs.get(job, 0):
                self._seqs[job] = int(frame["seq"])
                self._progress.setdefault(job, asyncio.Queue()).put_nowait(Progress.from_frame(frame))
            return
        if kind == "error" and frame.get("code") == "not_found" and frame.get("job") in self._results:
            future = self._results[frame["job"]]  # watched, but the server knows no such job: say so, never hang
            if not future.done():
                future.set_exception(Refused("not_found", str(frame.get("message", "")), ref))
                future.exception()  # retrieved: nobody may be waiting
                if self._waiting[frame["job"]]:
                    self._forget(frame["job"])
        if ref is not None and ref in self._answers:
            answer = self._answers.pop(ref)
            if not answer.done():
                answer.set_result(frame)

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a request and await its answer; a `rate_limited` one is sent again after `retry_after_ms`,
        one retry at a time, so a burst that met the server's frame budget is paced instead of repeated."""
        if self._paced:  # retries are being paced: a new frame now would take their turn
            async with self._pacing:
                ref, reply = await self._ask(frame)
        else:
            ref, reply = await self._ask(frame)
        if _rate_limited(reply):
            # A refusal's retry_after_ms is stale by the time this request's turn comes (others went first), so
            # every paced retry waits the longest delay the server asked for in this episode: a frame's worth of
            # budget. Sent one at a time that often, the retries go out no faster than the server allows.
            self._paced += 1
            self._interval = max(self._interval, _retry_after(reply))
            try:
                async with self._pacing:
                    while _rate_limited(reply):
                        await asyncio.sleep(self._interval)
                        ref, reply = await self._ask(frame)
                        if _rate_limited(reply):
                            self._interval = max(self._interval, _retry_after(reply))
            finally:
                self._paced -= 1
                if not self._paced:
                    self._interval = 0.0
        if reply.get("type") == "error":
            raise Refused(str(reply["code"]), str(reply["message"]), ref)
        return reply

    async def _ask(self, frame: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        ref = next(self._refs)
        answer = self._answers[ref] = asyncio.get_running_loop().create_future()
        await self._send({**frame, "ref": ref})
        return ref, await answer

    async def _send(self, frame: dict[str, Any]) -> None:
        if self._failure is not None:
            raise self._failure
        await asyncio.wait_for(self._connected.wait(), self.open_timeout * 10)
        assert self._ws is not None
        try:
            await self._ws.send(json.dumps(frame))
        except ConnectionClosed:
            raise ConnectionFailed("the connection dropped; try again") from None

    def _fail_answers(self, error: Error) -> None:
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(error)
        self._answers.clear()

    def _fail_waiters(self, error: Error) -> None:
        self._failure = error
        self._fail_answers(error)
        for future in self._results.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # nobody may be waiting: retrieved, so asyncio logs nothing


def _rate_limited(reply: dict[str, Any]) -> bool:
    return reply.get("type") == "error" and reply.get("code") == "rate_limited"


def _retry_after(reply: dict[str, Any]) -> float:
    """Seconds to wait before sending again, as the server said (0.1 s if it did not say)."""
    delay = reply.get("retry_after_ms")
    return (delay if isinstance(delay, int | float) and 0 < delay < 60_000 else 100) / 1000
