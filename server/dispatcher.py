"""Actor pools: one per kind, each call to the least-loaded actor, results awaited in the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError

from actors import JobErrorCode, JobKind
from actors._actor import KindActor
from server.config import Settings
from server.errors import PoolFull
from server.jobs import Job, JobState
from server.store import ResultCache
from server.table import JobTable

log = logging.getLogger("server.dispatcher")

MAX_ATTEMPTS = 3  # calls of one job cut off by a dying actor before it fails as worker_lost


@dataclass(eq=False)
class Pool:
    kind: JobKind
    names: list[str]
    handles: list[Any]
    capacity: int
    inflight: list[int] = field(default_factory=list)
    pending: deque[Job] = field(default_factory=deque)
    nodes: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inflight = [0] * len(self.handles)
        self.nodes = [None] * len(self.handles)

    def free_actor(self) -> int | None:
        """The least-loaded actor with a free slot, if any."""
        best = min(range(len(self.inflight)), key=self.inflight.__getitem__)
        return best if self.inflight[best] < self.capacity else None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "pending": len(self.pending),
            "actors": [
                {"name": name, "inflight": busy, "capacity": self.capacity, "node_id": node}
                for name, busy, node in zip(self.names, self.inflight, self.nodes, strict=True)
            ],
        }


@dataclass
class Running:
    ref: Any
    actor: int
    timer: asyncio.TimerHandle


class Dispatcher:
    """Sends jobs to actor pools and finishes them in the job table when their ObjectRefs resolve."""

    def __init__(self, settings: Settings, table: JobTable, kinds: dict[str, JobKind], cache: ResultCache) -> None:
        self.settings = settings
        self.table = table
        self.cache = cache
        self.kinds = kinds
        self.pools: dict[str, Pool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_ready: asyncio.Task[None] | None = None
        self.closing = False  # once set, calls cut off by the shutdown leave their jobs unfinished

    def start(self) -> None:
        """Create every pool's actors; they warm up on their own while jobs already queue at them."""
        self._loop = asyncio.get_running_loop()
        config = self.settings.worker_config()
        for kind in self.kinds.values():
            # The one envelope, named after the kind's worker (AudioLength, EuroResults): Ray's dashboard and
            # its per-class metrics then tell the kinds apart.
            envelope = type(kind.worker.__name__, (KindActor,), {"__module__": KindActor.__module__})
            actor_class: Any = ray.remote(envelope)
            size = self.settings.pool_size(kind.name, kind.pool.size)
            if size <= 0:
                continue
            names = [f"{kind.actor_name}-{index}" for index in range(size)]
            handles = [
                actor_class.options(
                    name=name,
                    namespace=self.settings.ray_namespace,
                    num_cpus=kind.pool.num_cpus or self.settings.actor_cpus,
                    max_concurrency=kind.pool.max_concurrency,
                    max_restarts=-1,
                    max_task_retries=0,
                ).remote(kind.name, config)
                for name in names
            ]
            self.pools[kind.name] = Pool(kind, names, handles, kind.pool.max_concurrency)
        self._watch_ready = asyncio.create_task(self._record_nodes())

    async def _record_nodes(self) -> None:
        async def record(pool: Pool, index: int, ref: Any) -> None:
            try:
                pool.nodes[index] = await ref
            except Exception as exc:  # an actor that cannot start shows up in /pools and the log
                log.error("actor %s did not start: %s", pool.names[index], exc)

        await asyncio.gather(*(
            record(pool, index, handle.node_id.remote())
            for pool in self.pools.values()
            for index, handle in enumerate(pool.handles)
        ))

    async def ready(self) -> None:
        """Wait until every actor has started (and warmed up)."""
        if self._watch_ready is not None:
            await asyncio.shield(self._watch_ready)

    async def close(self) -> None:
        """Stop the actors; jobs still running stay unfinished in the store, for the next start to run."""
        self.closing = True
        if self._watch_ready is not None:
            self._watch_ready.cancel()
        for pool in self.pools.values():
            for handle in pool.handles:
                ray.kill(handle, no_restart=True)
        self.pools.clear()

    def check_capacity(self, kind: str) -> None:
        """Refuse a new job of `kind` (PoolFull) when too many are already waiting, or no actor serves it."""
        pool = self.pools.get(kind)
        if pool is None:
            raise PoolFull(f"no actors serve {kind} on this server")
        if len(pool.pending) >= self.settings.max_pending:
            raise PoolFull(f"{len(pool.pending)} {kind} jobs are waiting; try again later")

    def submit(self, job: Job) -> None:
        if self.closing:
            return
        pool = self.pools[job.kind]
        actor = pool.free_actor() if not pool.pending else None
        if actor is not None:
            self._launch(pool, job, actor)
        else:
            pool.pending.append(job)

    def cancel(self, job: Job) -> bool:
        """Cancel an unfinished job; False when it had already ended."""
        if job.finished:
            return False
        if job.state is JobState.QUEUED:
            pool = self.pools.get(job.kind)
            if pool is not None and job in pool.pending:
                pool.pending.remove(job)
        running = job.running
        self.table.finish(job, JobState.CANCELLED)
        if isinstance(running, Running):
            running.timer.cancel()
            ray.cancel(running.ref)
        return True

    def _launch(self, pool: Pool, job: Job, actor: int) -> None:
        assert self._loop is not None
        pool.inflight[actor] += 1
        job.attempts += 1
        ref = pool.handles[actor].run.remote(job.args)
        timer = self._loop.call_later(self.settings.job_timeout, self._time_out, job)
        job.running = Running(ref, actor, timer)
        self.table.start(job)
        future = asyncio.wrap_future(ref.future(), loop=self._loop)
        future.add_done_callback(partial(self._done, pool, job, actor))

    def _pump(self, pool: Pool) -> None:
        while pool.pending:
            actor = pool.free_actor()
            if actor is None:
                return
            self._launch(pool, pool.pending.popleft(), actor)

    def _time_out(self, job: Job) -> None:
        if self.closing:
            return
        running = job.running
        seconds = f"{self.settings.job_timeout:g}"
        error = _error(JobErrorCode.TIMEOUT, f"the job ran longer than {seconds} s")
        if self.table.finish(job, JobState.FAILED, error=error):
            ray.cancel(running.ref)

    def _done(self, pool: Pool, job: Job, actor: int, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved even when unused (a cancelled or timed-out job), so asyncio logs nothing
        if self.closing:
            return
        pool.inflight[actor] -= 1
        running = job.running
        if isinstance(running, Running) and running.actor == actor:
            running.timer.cancel()
        if not job.finished:
            self._settle(pool, job, future)
        self._pump(pool)

    def _settle(self, pool: Pool, job: Job, future: asyncio.Future[Any]) -> None:
        try:
            outcome = future.result()
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if job.attempts < MAX_ATTEMPTS:
                log.warning("actor died under job %s (%s); running it again", job.id, type(exc).__name__)
                job.state = JobState.QUEUED
                job.running = None
                pool.pending.appendleft(job)
                return
            message = f"the worker died {job.attempts} times running this job; giving up"
            self.table.finish(job, JobState.FAILED, error=_error(JobErrorCode.WORKER_LOST, message))
            return
        except (TaskCancelledError, asyncio.CancelledError):
            self.table.finish(job, JobState.CANCELLED)
            return
        except Exception:
            log.exception("job %s failed in Ray", job.id)
            self.table.finish(job, JobState.FAILED, error=_error(JobErrorCode.INTERNAL, "the job failed unexpectedly"))
            return
        if "ok" in outcome:
            if self.table.finish(job, JobState.SUCCEEDED, result=outcome["ok"]) and pool.kind.cacheable:
                self.cache.remember(job.kind, job.args, outcome["ok"])
        else:
            self.table.finish(job, JobState.FAILED, error=outcome["error"])


def _error(code: JobErrorCode, message: str) -> dict[str, str]:
    return {"code": str(code), "message": message}
