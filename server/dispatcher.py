"""Actor pools: one per kind, each job to the least-loaded actor, results awaited in the event loop. The pools'
bookkeeping is `pools.py`, the autoscale decision `autoscale.py`, asking actors whether they live `health.py`."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError

from actors import JobErrorCode, JobKind, job_error
from actors._actor import named_actor
from server.autoscale import Figures, decide
from server.config import Settings, SettingsError
from server.errors import PoolFull
from server.fairqueue import FairQueue
from server.health import Health
from server.jobs import Job, JobState
from server.pools import ActorSlot, Pool, placement_problem
from server.store import ResultCache
from server.table import JobTable

log = logging.getLogger("server.dispatcher")

MAX_ATTEMPTS = 3  # calls of one job cut off by a dying actor before it fails as worker_lost
SCALE_EVERY = 0.25  # seconds between looks at the autoscaled pools


@dataclass
class Running:
    ref: Any
    slot: ActorSlot
    timer: asyncio.TimerHandle
    batched: bool = False  # one of several jobs of one actor call: cancelled alone, never by cancelling the call


def _stop(running: Any) -> None:
    """Stop a job's call: its timer, and the Ray call itself unless other jobs share it (a batch)."""
    if isinstance(running, Running):
        running.timer.cancel()
        if not running.batched:
            ray.cancel(running.ref)


class Dispatcher:
    """Sends jobs to actor pools and finishes them in the job table when their ObjectRefs resolve."""

    def __init__(self, settings: Settings, table: JobTable, kinds: dict[str, JobKind], cache: ResultCache) -> None:
        self.settings = settings
        self.table = table
        self.cache = cache
        self.kinds = kinds
        self.pools: dict[str, Pool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_ready: asyncio.Future[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # every task this dispatcher starts, awaited on close
        self._classes: dict[str, Any] = {}  # kind -> its actor class
        self.closing = False  # once set, calls cut off by the shutdown leave their jobs unfinished
        self.health = Health(self._spawn, self._replace, self._pump, lambda: self.closing)
        self.on_batch: Callable[[str, int], None] = lambda kind, size: None  # told each call's job count (metrics)

    def start(self) -> None:
        """Create every pool's actors; they warm up on their own while jobs already queue at them. SettingsError,
        at once, for a kind whose actors no node can take (a GPU on a cluster without one): never a hang."""
        self._loop = asyncio.get_running_loop()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        for kind in self.kinds.values():
            least, most = self.settings.pool_bounds(kind.name, kind.pool.size)
            if most <= 0:
                continue
            if (problem := placement_problem(kind.name, kind.pool.needs(), nodes)) is not None:
                raise SettingsError(problem)
            self._classes[kind.name] = ray.remote(named_actor(kind.worker.__name__))
            pool = Pool(kind, kind.pool.max_concurrency, least, max(most, least), target=least)
            pool.slots = [self._new_slot(pool) for _ in range(least)]
            self.pools[kind.name] = pool
        self._watch_ready = asyncio.ensure_future(asyncio.gather(*(
            self.health.record_node(slot) for pool in self.pools.values() for slot in pool.slots)))
        if any(pool.most > pool.least for pool in self.pools.values()):
            self._spawn(self._autoscale())
        self._spawn(self.health.probe_forever(self.pools.values))

    def _new_slot(self, pool: Pool) -> ActorSlot:
        name = pool.next_name()
        handle = self._classes[pool.kind.name].options(
            name=name,
            namespace=self.settings.ray_namespace,
            num_cpus=pool.kind.pool.num_cpus or self.settings.actor_cpus,
            max_concurrency=pool.kind.pool.max_concurrency,
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy="SPREAD",  # over the cluster's nodes, so losing one loses few
            num_gpus=pool.kind.pool.num_gpus,
            memory=pool.kind.pool.memory,
            resources=dict(pool.kind.pool.resources),
        ).remote(pool.kind.worker.__module__, self.settings.worker_config())
        return ActorSlot(name, handle)

    def _add_actor(self, pool: Pool) -> None:
        slot = self._new_slot(pool)
        pool.slots.append(slot)
        self._spawn(self.health.record_node(slot))
        log.info("pool %s grew to %d actors (%s)", pool.kind.name, pool.size, slot.name)

    def _retire(self, pool: Pool, slot: ActorSlot, kill: bool = True) -> None:
        """Take an actor out of the pool (a job it still runs keeps its slot until it ends)."""
        slot.alive = False
        pool.slots.remove(slot)
        if kill:
            ray.kill(slot.handle, no_restart=True)

    def _replace(self, pool: Pool, slot: ActorSlot) -> None:
        """An actor that Ray will not restart: another one in its place."""
        if slot.alive:
            self._retire(pool, slot, kill=False)
            self._add_actor(pool)

    async def _autoscale(self) -> None:
        while not self.closing:
            now = asyncio.get_running_loop().time()
            for pool in self.pools.values():
                if pool.most > pool.least:
                    self._scale(pool, now)
            await asyncio.sleep(SCALE_EVERY)

    def _scale(self, pool: Pool, now: float) -> None:
        idle = pool.idle()
        decision = decide(Figures(
            unfinished=len(pool.pending) + sum(slot.inflight for slot in pool.slots), size=pool.size, idle=len(idle),
            least=pool.least, most=pool.most, per_actor=self.settings.pool_target_per_actor or pool.capacity, now=now,
            over_since=pool.over_since, under_since=pool.under_since,
            upscale_delay=self.settings.pool_upscale_delay_s, downscale_delay=self.settings.pool_downscale_delay_s))
        pool.target, pool.over_since, pool.under_since = decision.target, decision.over_since, decision.under_since
        for _ in range(decision.grow):
            self._add_actor(pool)
        if decision.grow:
            self._pump(pool)
        if decision.shrink:
            self._retire(pool, idle[-1])  # never an actor that is running a job
            log.info("pool %s shrank to %d actors", pool.kind.name, pool.size)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ready(self) -> None:
        """Wait until every actor has started (and warmed up)."""
        if self._watch_ready is not None:
            await asyncio.shield(self._watch_ready)

    async def close(self) -> None:
        """Stop the actors; jobs still running stay unfinished in the store, for the next start to run."""
        self.closing = True
        tasks = [task for task in (self._watch_ready, *self._tasks) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self.pools.values():
            if pool.flush is not None:
                pool.flush.cancel()
            for slot in pool.slots:
                ray.kill(slot.handle, no_restart=True)
        self.pools.clear()

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """Per kind: live actors, jobs waiting for one, jobs running."""
        return {kind: (pool.size, len(pool.pending), sum(slot.inflight for slot in pool.slots))
                for kind, pool in self.pools.items()}

    def not_started(self) -> dict[str, int]:
        """Per kind, the live actors that have not started yet (none once every pool is up)."""
        waiting = {kind: sum(slot.node is None for slot in pool.slots) for kind, pool in self.pools.items()}
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
        pool.submitted_by(job.tenant, time.monotonic())
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
        _stop(running)
        return True

    def drop(self, job: Job) -> None:
        """Stop running or queueing a job without finishing it here (another server owns it now)."""
        pool = self.pools.get(job.kind)
        if pool is not None:
            pool.pending.remove(job)
        running = job.running
        job.running = None
        _stop(running)

    def _launch(self, pool: Pool, job: Job, slot: ActorSlot) -> None:
        """One job in one actor call (its slot taken already)."""
        assert self._loop is not None
        job.attempts += 1
        timer = self._loop.call_later(self.settings.job_timeout, self._time_out, job)
        future: asyncio.Future[Any]
        if pool.kind.streams:
            ref = slot.handle.stream.options(num_returns="streaming").remote(job.args)
            running = job.running = Running(ref, slot, timer)
            future = self._loop.create_future()
            self._spawn(self._follow(job, running, future))
        else:
            ref = slot.handle.run.remote(job.args)
            job.running = Running(ref, slot, timer)
            future = asyncio.wrap_future(ref.future(), loop=self._loop)
        self.table.start(job)
        future.add_done_callback(partial(self._done, pool, job, slot))

    async def _follow(self, job: Job, running: Running, outcome: asyncio.Future[Any]) -> None:
        """A streaming kind's call (a Ray streaming generator): each `progress` to the job's watchers the moment its
        ObjectRef resolves; the last item, its result, settles `outcome` as a plain call's would."""
        try:
            async for ref in running.ref:
                item = await ref
                if "progress" not in item:
                    outcome.set_result(item)
                    return
                if job.running is running:  # not cancelled, timed out or handed to another server meanwhile
                    self.table.progress(job, item["progress"])
            raise RuntimeError("the stream ended without a result")
        except asyncio.CancelledError:
            outcome.cancel()
            raise
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)

    def _pump(self, pool: Pool, flushing: bool = False) -> None:
        batch = pool.kind.batch if self.settings.batch else None
        if batch is not None and not flushing and pool.pending and self._gathering(pool, batch.max_size,
                                                                                    batch.max_wait_ms):
            return
        while pool.pending:
            slot = pool.free_actor()
            if slot is None:
                return
            most = 1 if batch is None else min(batch.max_size, pool.capacity - slot.inflight)
            jobs: list[Job] = []
            while len(jobs) < most:
                kept_from = pool.headroom_for(time.monotonic())
                job = pool.pending.pop(None if kept_from is None else kept_from.__ne__)
                if job is None:
                    break  # only the heaviest tenant's jobs wait: the last slot stays free for the others
                pool.started(slot, job.tenant)
                jobs.append(job)
            if not jobs:
                return
            if len(jobs) == 1:
                self._launch(pool, jobs[0], slot)
                if batch is not None:
                    self.on_batch(pool.kind.name, 1)
            else:
                self._launch_batch(pool, jobs, slot)

    def _gathering(self, pool: Pool, max_size: int, max_wait_ms: float) -> bool:
        """Whether a batching pool's queue waits for more jobs: only while its actors are busy (an idle pool sends a
        lone job at once), for at most `max_wait_ms` (0: the rest of this turn of the event loop, which gathers
        the frames read in it), and never once `max_size` jobs wait."""
        if len(pool.pending) >= max_size or not any(slot.inflight for slot in pool.slots):
            return False
        if pool.flush is not None:
            return True
        assert self._loop is not None
        pool.flush = self._loop.call_later(max_wait_ms / 1000, self._flush, pool)
        return True

    def _flush(self, pool: Pool) -> None:
        pool.flush = None
        if not self.closing:
            self._pump(pool, flushing=True)

    def _launch_batch(self, pool: Pool, jobs: list[Job], slot: ActorSlot) -> None:
        """Several queued jobs in one actor call (their slots taken already); each result settles its own job the
        moment it comes back, a failure fails its job alone, and a lost actor re-runs only the jobs without one."""
        assert self._loop is not None
        generator = slot.handle.run_many.options(num_returns="streaming").remote([job.args for job in jobs])
        for job in jobs:
            job.attempts += 1
            timer = self._loop.call_later(self.settings.job_timeout, self._time_out, job)
            job.running = Running(generator, slot, timer, batched=True)
            self.table.start(job)
        self.on_batch(pool.kind.name, len(jobs))
        self._spawn(self._follow_batch(pool, jobs, slot, generator))

    async def _follow_batch(self, pool: Pool, jobs: list[Job], slot: ActorSlot, generator: Any) -> None:
        left = dict(enumerate(jobs))
        try:
            async for ref in generator:
                for outcome in (await ref)["done"]:
                    self._ended(pool, left.pop(outcome["i"]), slot, outcome)
                self._pump(pool)
            if left:
                raise RuntimeError("the batch ended without every result")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for job in left.values():
                self._ended(pool, job, slot, exc)
            self._pump(pool)

    def _time_out(self, job: Job) -> None:
        if self.closing:
            return
        running = job.running
        seconds = f"{self.settings.job_timeout:g}"
        error = job_error(JobErrorCode.TIMEOUT, f"the job ran longer than {seconds} s")
        if self.table.finish(job, JobState.FAILED, error=error):
            _stop(running)

    def _done(self, pool: Pool, job: Job, slot: ActorSlot, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            outcome: dict[str, Any] | BaseException = asyncio.CancelledError()
        else:  # retrieved even when unused (a cancelled or timed-out job), so asyncio logs nothing
            outcome = future.exception() or future.result()
        self._ended(pool, job, slot, outcome)
        self._pump(pool)

    def _ended(self, pool: Pool, job: Job, slot: ActorSlot, outcome: dict[str, Any] | BaseException) -> None:
        """A job's call came back, with its outcome (`{"ok"}`/`{"error"}`) or what Ray raised instead."""
        if self.closing:
            return
        running = job.running
        if isinstance(running, Running) and running.slot is slot:
            running.timer.cancel()
        pool.ended(slot, job.tenant, None if job.started_at is None else (time.time() - job.started_at) * 1000)
        if not job.finished and not job.remote:  # a dropped job (another server's now) ends without a result here
            self._settle(pool, job, slot, outcome)

    def _settle(self, pool: Pool, job: Job, slot: ActorSlot, outcome: dict[str, Any] | BaseException) -> None:
        try:
            if isinstance(outcome, BaseException):
                raise outcome
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            self.health.failed(pool, slot)
            if job.attempts < MAX_ATTEMPTS:
                log.warning("actor died under job %s (%s); running it again", job.id, type(exc).__name__)
                job.state = JobState.QUEUED
                job.running = None
                pool.pending.push(job, front=True)
                return
            message = f"the worker died {job.attempts} times running this job; giving up"
            self.table.finish(job, JobState.FAILED, error=job_error(JobErrorCode.WORKER_LOST, message))
            return
        except (TaskCancelledError, asyncio.CancelledError):
            self.table.finish(job, JobState.CANCELLED)
            return
        except Exception:
            log.exception("job %s failed in Ray", job.id)
            error = job_error(JobErrorCode.INTERNAL, "the job failed unexpectedly")
            self.table.finish(job, JobState.FAILED, error=error)
            return
        assert isinstance(outcome, dict)
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

