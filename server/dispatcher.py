"""Actor pools: one per kind, each call to the least-loaded actor, results awaited in the event loop."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError

from actors import JobErrorCode, JobKind
from actors._actor import named_actor
from server.config import Settings
from server.errors import PoolFull
from server.fairqueue import FairQueue
from server.jobs import Job, JobState
from server.store import ResultCache
from server.table import JobTable

log = logging.getLogger("server.dispatcher")

MAX_ATTEMPTS = 3  # calls of one job cut off by a dying actor before it fails as worker_lost
RECHECK_S = 0.5  # seconds between asking an actor that Ray is restarting whether it is back
PROBE_EVERY = 5.0  # seconds between asking every started actor where it runs, to notice deaths no job met
SCALE_EVERY = 0.25  # seconds between looks at the autoscaled pools
PRESENT_S = 10.0  # a tenant that submitted a kind this recently is using it: the last free slot is kept for it


@dataclass(eq=False)
class Pool:
    """A kind's actors. Slots are never removed, only retired and reused, so the index a running job holds
    stays valid; an autoscaled pool keeps between `least` and `most` of them alive."""

    kind: JobKind
    names: list[str]
    handles: list[Any]
    capacity: int
    least: int = 0
    most: int = 0
    inflight: list[int] = field(default_factory=list)
    pending: FairQueue = field(default_factory=FairQueue)  # served round-robin across tenants
    nodes: list[str | None] = field(default_factory=list)
    alive: list[bool] = field(default_factory=list)
    restarting: list[bool] = field(default_factory=list)  # a call failed on it; no jobs until it answers again
    target: int = 0
    over_since: float | None = None  # when the pool first wanted more actors than it has
    under_since: float | None = None  # when it first wanted fewer
    created: int = 0  # actors ever made: each new one gets a fresh name
    run_ms: float | None = None  # recent time a job spends on an actor (a moving average), for `eta_ms`
    running_by: Counter[str] = field(default_factory=Counter)  # tenant -> its jobs running on the pool
    seen: dict[str, float] = field(default_factory=dict)  # tenant -> when it last submitted this kind

    def serving(self) -> list[int]:
        """The actors that take jobs: alive, and not being restarted by Ray."""
        return [index for index, alive in enumerate(self.alive) if alive and not self.restarting[index]]

    def free_slots(self) -> int:
        return sum(self.capacity - self.inflight[index] for index in self.serving())

    def headroom_for(self, now: float) -> str | None:
        """The tenant that may not take the pool's last free slot, if any: the one running the most jobs, while
        another tenant has used the kind within PRESENT_S. That slot is kept for the others, so a light tenant's
        job starts at once beside a heavy one instead of waiting for one of its jobs to end."""
        if not self.running_by or self.free_slots() != 1:
            return None
        heaviest = max(self.running_by, key=self.running_by.__getitem__)
        others = any(tenant != heaviest and now - when < PRESENT_S for tenant, when in self.seen.items())
        return heaviest if others else None

    def __post_init__(self) -> None:
        self.inflight = [0] * len(self.handles)
        self.nodes = [None] * len(self.handles)
        self.alive = [True] * len(self.handles)
        self.restarting = [False] * len(self.handles)
        self.created = len(self.handles)
        self.least = self.least or len(self.handles)
        self.most = max(self.most, self.least)
        self.target = len(self.handles)

    @property
    def size(self) -> int:
        return sum(self.alive)

    def free_actor(self) -> int | None:
        """The least-loaded live actor with a free slot, if any (never one that Ray is restarting)."""
        live = self.serving()
        if not live:
            return None
        best = min(live, key=self.inflight.__getitem__)
        return best if self.inflight[best] < self.capacity else None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "pending": len(self.pending),
            "target": self.target,
            "bounds": {"min": self.least, "max": self.most},
            "actors": [
                {"name": name, "inflight": busy, "capacity": self.capacity, "node_id": node, "restarting": down}
                for name, busy, node, alive, down in zip(self.names, self.inflight, self.nodes, self.alive,
                                                         self.restarting, strict=True)
                if alive
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
        self._scaler: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._probing: set[Any] = set()  # handles with a probe under way
        self._tasks: set[asyncio.Task[Any]] = set()
        self._classes: dict[str, Any] = {}  # kind -> its actor class
        self.closing = False  # once set, calls cut off by the shutdown leave their jobs unfinished

    def start(self) -> None:
        """Create every pool's actors; they warm up on their own while jobs already queue at them."""
        self._loop = asyncio.get_running_loop()
        for kind in self.kinds.values():
            least, most = self.settings.pool_bounds(kind.name, kind.pool.size)
            if most <= 0:
                continue
            self._classes[kind.name] = ray.remote(named_actor(kind.worker.__name__))
            names = [f"{kind.actor_name}-{index}" for index in range(least)]
            pool = Pool(kind, names, [self._actor(kind, name) for name in names], kind.pool.max_concurrency,
                        least, most)
            self.pools[kind.name] = pool
        self._watch_ready = asyncio.create_task(self._record_nodes())
        if any(pool.most > pool.least for pool in self.pools.values()):
            self._scaler = asyncio.create_task(self._autoscale())
        self._prober = asyncio.create_task(self._probe_actors())

    def _actor(self, kind: JobKind, name: str) -> Any:
        return self._classes[kind.name].options(
            name=name,
            namespace=self.settings.ray_namespace,
            num_cpus=kind.pool.num_cpus or self.settings.actor_cpus,
            max_concurrency=kind.pool.max_concurrency,
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy="SPREAD",  # over the cluster's nodes, so losing one loses few
        ).remote(kind.name, self.settings.worker_config())

    def _add_actor(self, pool: Pool) -> None:
        """One more live actor: in a retired slot if there is one (its index is free), else a new slot."""
        name = f"{pool.kind.actor_name}-{pool.created}"
        pool.created += 1
        handle = self._actor(pool.kind, name)
        retired = next((index for index, alive in enumerate(pool.alive) if not alive and not pool.inflight[index]),
                       None)
        if retired is None:
            pool.names.append(name)
            pool.handles.append(handle)
            pool.inflight.append(0)
            pool.nodes.append(None)
            pool.alive.append(True)
            pool.restarting.append(False)
            retired = len(pool.handles) - 1
        else:
            pool.names[retired], pool.handles[retired], pool.nodes[retired] = name, handle, None
            pool.alive[retired], pool.restarting[retired] = True, False
        self._spawn(self._record_node(pool, retired, handle))
        log.info("pool %s grew to %d actors (%s)", pool.kind.name, pool.size, name)

    def _retire(self, pool: Pool, index: int, kill: bool = True) -> None:
        pool.alive[index] = False
        if kill:
            ray.kill(pool.handles[index], no_restart=True)

    async def _autoscale(self) -> None:
        """Grow a pool whose unfinished jobs per actor exceed the target for the upscale delay; shrink it by one
        idle actor after the downscale delay with too little work; never beyond its bounds."""
        while not self.closing:
            now = asyncio.get_running_loop().time()
            for pool in self.pools.values():
                if pool.most > pool.least:
                    self._scale(pool, now)
            await asyncio.sleep(SCALE_EVERY)

    def _scale(self, pool: Pool, now: float) -> None:
        per_actor = self.settings.pool_target_per_actor or pool.capacity
        unfinished = len(pool.pending) + sum(pool.inflight)
        pool.target = min(max(-(-unfinished // per_actor), pool.least), pool.most)
        if pool.target > pool.size:
            pool.under_since = None
            pool.over_since = pool.over_since if pool.over_since is not None else now
            if now - pool.over_since >= self.settings.pool_upscale_delay_s:
                while pool.size < pool.target:
                    self._add_actor(pool)
                pool.over_since = None
                self._pump(pool)
        elif pool.target < pool.size:
            pool.over_since = None
            pool.under_since = pool.under_since if pool.under_since is not None else now
            idle = [index for index, alive in enumerate(pool.alive) if alive and not pool.inflight[index]]
            if idle and now - pool.under_since >= self.settings.pool_downscale_delay_s:
                self._retire(pool, idle[-1])  # never an actor that is running a job
                pool.under_since = now  # the next one waits its turn
                log.info("pool %s shrank to %d actors", pool.kind.name, pool.size)
        else:
            pool.over_since = pool.under_since = None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_nodes(self) -> None:
        await asyncio.gather(*(
            self._record_node(pool, index, handle)
            for pool in self.pools.values()
            for index, handle in enumerate(pool.handles)
        ))

    @staticmethod
    async def _record_node(pool: Pool, index: int, handle: Any) -> None:
        try:
            node = await handle.node_id.remote()
        except Exception as exc:  # an actor that cannot start shows up in /pools and the log
            log.error("actor %s did not start: %s", pool.names[index], exc)
            return
        if pool.handles[index] is handle:
            pool.nodes[index] = node

    async def _recover(self, pool: Pool, index: int, handle: Any) -> None:
        """After a call failed on an actor (its process or its node died): wait until Ray has restarted it and
        note where it runs now, or replace it if Ray will not restart it. Jobs go to the other actors meanwhile."""
        while not self.closing and pool.handles[index] is handle:
            try:
                node = await handle.node_id.remote()
            except ActorUnavailableError:
                await asyncio.sleep(RECHECK_S)  # being restarted; ask again
                continue
            except RayActorError as exc:  # dead for good: killed, or Ray gave up restarting it
                if pool.alive[index]:
                    log.warning("actor %s is gone (%s); starting another", pool.names[index], type(exc).__name__)
                    self._retire(pool, index, kill=False)
                    self._add_actor(pool)
            else:
                pool.nodes[index], pool.restarting[index] = node, False
                log.info("actor %s is back, on node %s", pool.names[index], node)
            self._pump(pool)
            return

    async def _probe_actors(self) -> None:
        """Ask every started actor where it runs, every PROBE_EVERY s: an actor killed, or moved by Ray from a lost
        node, while no job ran on it is noticed (and /pools and /readyz say so) before a job meets it."""
        while not self.closing:
            await asyncio.sleep(PROBE_EVERY)
            for pool in self.pools.values():
                for index, handle in enumerate(pool.handles):
                    started = pool.alive[index] and not pool.restarting[index] and pool.nodes[index] is not None
                    if started and handle not in self._probing:
                        self._probing.add(handle)
                        self._spawn(self._probe(pool, index, handle))

    async def _probe(self, pool: Pool, index: int, handle: Any) -> None:
        try:
            node = await handle.node_id.remote()  # waits its turn behind the actor's jobs: never a timeout
        except RayActorError:
            if pool.handles[index] is handle and pool.alive[index] and not pool.restarting[index]:
                pool.restarting[index], pool.nodes[index] = True, None
                await self._recover(pool, index, handle)
        else:
            if pool.handles[index] is handle and not pool.restarting[index]:
                pool.nodes[index] = node
        finally:
            self._probing.discard(handle)

    async def ready(self) -> None:
        """Wait until every actor has started (and warmed up)."""
        if self._watch_ready is not None:
            await asyncio.shield(self._watch_ready)

    async def close(self) -> None:
        """Stop the actors; jobs still running stay unfinished in the store, for the next start to run."""
        self.closing = True
        for task in (self._watch_ready, self._scaler, self._prober, *self._tasks):
            if task is not None:
                task.cancel()
        for pool in self.pools.values():
            for handle, alive in zip(pool.handles, pool.alive, strict=True):
                if alive:
                    ray.kill(handle, no_restart=True)
        self.pools.clear()

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """Per kind: live actors, jobs waiting for one, jobs running."""
        return {kind: (pool.size, len(pool.pending), sum(pool.inflight)) for kind, pool in self.pools.items()}

    def not_started(self) -> dict[str, int]:
        """Per kind, the live actors that have not started yet (none once every pool is up)."""
        waiting = {kind: sum(node is None for node, alive in zip(pool.nodes, pool.alive, strict=True) if alive)
                   for kind, pool in self.pools.items()}
        return {kind: count for kind, count in waiting.items() if count}

    def check_capacity(self, kind: str, tenant: str = "") -> None:
        """Refuse a new job of `kind` (PoolFull) when no actor serves it, or when AMI_MAX_PENDING jobs wait and
        `tenant` already holds its share of them (the limit divided among the tenants with jobs waiting): one
        tenant's backlog never makes another's submission busy. Past twice the limit, every tenant is refused."""
        pool = self.pools.get(kind)
        if pool is None:
            raise PoolFull(f"no actors serve {kind} on this server")
        check_share(pool.pending, kind, tenant, self.settings.max_pending)

    def position(self, job: Job) -> tuple[int, int | None] | None:
        """A queued job's place (jobs ahead of it) and the milliseconds until it starts, from the kind's recent
        run times and its actors' slots (None until the kind has run a job); None if it is not queued here."""
        pool = self.pools.get(job.kind)
        if pool is None or (ahead := pool.pending.position(job)) is None:
            return None
        slots = len(pool.serving()) * pool.capacity
        if pool.run_ms is None or not slots:
            return ahead, None
        return ahead, math.ceil(pool.run_ms * (ahead + 1) / slots)

    def queued_by_tenant(self) -> dict[str, dict[str, int]]:
        return {kind: pool.pending.by_tenant() for kind, pool in self.pools.items()}

    def submit(self, job: Job) -> None:
        if self.closing:
            return
        pool = self.pools[job.kind]
        now = time.monotonic()
        pool.seen[job.tenant] = now
        if len(pool.seen) > 1000:
            pool.seen = {tenant: when for tenant, when in pool.seen.items() if now - when < PRESENT_S}
        pool.pending.push(job)  # through the queue even when it is empty: one path decides who goes next
        self._pump(pool)

    def cancel(self, job: Job) -> bool:
        """Cancel an unfinished job; False when it had already ended."""
        if job.finished:
            return False
        if job.state is JobState.QUEUED:
            pool = self.pools.get(job.kind)
            if pool is not None:
                pool.pending.remove(job)
        running = job.running
        self.table.finish(job, JobState.CANCELLED)
        if isinstance(running, Running):
            running.timer.cancel()
            ray.cancel(running.ref)
        return True

    def drop(self, job: Job) -> None:
        """Stop running or queueing a job without finishing it here (another server owns it now)."""
        pool = self.pools.get(job.kind)
        if pool is not None:
            pool.pending.remove(job)
        running = job.running
        job.running = None
        if isinstance(running, Running):
            running.timer.cancel()
            ray.cancel(running.ref)

    def _launch(self, pool: Pool, job: Job, actor: int) -> None:
        assert self._loop is not None
        pool.inflight[actor] += 1
        pool.running_by[job.tenant] += 1
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
            kept_from = pool.headroom_for(time.monotonic())
            job = pool.pending.pop(None if kept_from is None else kept_from.__ne__)
            if job is None:
                return  # only the heaviest tenant's jobs wait: the last slot stays free for the others
            self._launch(pool, job, actor)

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
        pool.running_by[job.tenant] -= 1
        if pool.running_by[job.tenant] <= 0:
            del pool.running_by[job.tenant]
        running = job.running
        if isinstance(running, Running) and running.actor == actor:
            running.timer.cancel()
        if job.started_at is not None:
            ms = (time.time() - job.started_at) * 1000
            pool.run_ms = ms if pool.run_ms is None else 0.8 * pool.run_ms + 0.2 * ms
        if not job.finished and not job.remote:  # a dropped job (another server's now) ends without a result here
            self._settle(pool, job, actor, future)
        self._pump(pool)

    def _settle(self, pool: Pool, job: Job, actor: int, future: asyncio.Future[Any]) -> None:
        try:
            outcome = future.result()
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if pool.alive[actor] and not pool.restarting[actor]:
                pool.restarting[actor], pool.nodes[actor] = True, None
                self._spawn(self._recover(pool, actor, pool.handles[actor]))
            if job.attempts < MAX_ATTEMPTS:
                log.warning("actor died under job %s (%s); running it again", job.id, type(exc).__name__)
                job.state = JobState.QUEUED
                job.running = None
                pool.pending.push(job, front=True)
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


def check_share(queue: FairQueue, kind: str, tenant: str, limit: int) -> None:
    """Dispatcher.check_capacity's rule for one queue (the fake pools of the unit tier use it too)."""
    waiting = len(queue)
    if waiting < limit:
        return
    mine = queue.queued(tenant)
    share = limit // (queue.tenants() + (0 if mine else 1))
    if mine >= share or waiting >= 2 * limit:
        raise PoolFull(f"{waiting} {kind} jobs are waiting, {mine} of them yours; try again later")


def _error(code: JobErrorCode, message: str) -> dict[str, str]:
    return {"code": str(code), "message": message}
