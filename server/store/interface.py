"""What every job store backend is: the Protocols the server is typed against, and the record every backend keeps.

A backend is one module beside this one (memory, sqlite, redis) whose class implements `Store` and says so in a
conformance line that mypy checks (`_: type[Store] = TheBackend`). Writes never block the event loop: they queue
for a writer that commits them in order, in batches, and resolves each write's future in the loop (True once
durable, False if it could not be saved).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from server.jobs import Job, JobState

Saved = asyncio.Future[bool]  # resolves in the event loop once a write is durable (False: it failed)
MAX_BATCH = 2000  # writes committed together at the most


class JobStore(Protocol):
    """Jobs and their results, written in order; what a restart or another server reads back."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def health(self) -> str | None:
        """Why the store cannot take writes now, or None when it can."""

    def unavailable(self) -> str | None:
        """Why no job may be accepted now (the store cannot keep it), or None. Unlike a failed write, this lasts
        until the store itself recovers, so refusing new jobs meanwhile cannot keep it from recovering."""

    def put(self, job: Job) -> Saved: ...

    def finish(self, job: Job) -> Saved:
        """Save a job's end as its whole record (a result is durable even if the job's first save was lost)."""

    def start(self, job: Job) -> None:
        """Note that a job is running, for other servers' `status` (shared stores; best effort)."""

    async def get(self, job_id: str) -> Job | None: ...

    async def unfinished(self, owner: str) -> list[Job]:
        """The jobs a restart must run again (none for a store that keeps nothing across restarts)."""

    async def purge(self, before: float) -> int:
        """Forget jobs finished before `before` (a store whose records expire on their own forgets none here)."""

    async def hold_lease(self, owner: str) -> None:
        """Say, for as long as this runs, that `owner` is alive (shared stores; others adopt a dead one's jobs)."""

    async def adopt(self, owner: str) -> list[Job]:
        """Unfinished jobs of servers whose lease ran out, now `owner`'s (one adopter per job); shared stores."""


class ResultCache(Protocol):
    """Results of cacheable kinds, reused for the same args."""

    async def cached(self, kind: str, args: dict[str, Any]) -> Any:
        """The saved result of an earlier success of a cacheable kind with these args, or None."""

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None:
        """Keep the result of a success of a cacheable kind (best effort: nothing waits for it)."""


JobEvent = Callable[[str], None]  # told a job id


class ClusterEvents(Protocol):
    """What servers sharing a store tell each other."""

    async def listen(self, on_finished: JobEvent, on_cancel: JobEvent, on_lost: JobEvent) -> None:
        """Be told, from now on, of jobs finished or cancels asked for on other servers, and of jobs of this
        server's that another one owns now; returns once listening (nothing announced after it is missed)."""

    def request_cancel(self, job_id: str) -> None:
        """Ask the server that runs a job to cancel it."""


class Store(JobStore, ResultCache, ClusterEvents, Protocol):
    """What the server needs of a backend: every backend is one."""


class SingleServer:
    """The cluster half of a store that one server has to itself: no leases, nobody else to hear from."""

    def start(self, job: Job) -> None:
        pass

    async def hold_lease(self, owner: str) -> None:
        pass

    async def adopt(self, owner: str) -> list[Job]:
        return []

    async def listen(self, on_finished: JobEvent, on_cancel: JobEvent, on_lost: JobEvent) -> None:
        pass

    def request_cancel(self, job_id: str) -> None:
        pass


def to_record(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "args": job.args, "ref": job.ref, "owner": job.owner,
        "state": str(job.state), "created_at": job.created_at, "finished_at": job.finished_at,
        "result": job.result, "error": job.error, "restarts": job.restarts, "tenant": job.tenant,
        "priority": job.priority, "started_at": job.started_at,
    }


def from_record(record: dict[str, Any]) -> Job:
    job = Job(record["kind"], record["args"], record.get("ref"), id=record["id"], owner=record.get("owner") or "",
              state=JobState(record["state"]), created_at=float(record["created_at"]),
              restarts=int(record.get("restarts") or 0), tenant=record.get("tenant") or "",
              priority=5 if record.get("priority") is None else int(record["priority"]))
    job.finished_at = record.get("finished_at")
    job.started_at = record.get("started_at")
    job.result = record.get("result")
    job.error = record.get("error")
    job.published = job.finished
    return job


def cache_key(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


def saved_now(ok: bool = True) -> Saved:
    """A write's answer that is known already (a store with nothing to wait for)."""
    future = asyncio.get_running_loop().create_future()
    future.set_result(ok)
    return future


def resolve_all(outcomes: list[tuple[Saved | None, bool]]) -> None:
    """Answer each write (in the event loop): True once durable, False if it could not be saved."""
    for saved, ok in outcomes:
        if saved is not None and not saved.done():
            saved.set_result(ok)
