"""Admission and the services every handler shares: the one place where a submission, from the socket or
REST, becomes a job (kind, schema, meaning, limits, save, start), and where the table, store and
dispatcher meet. Neither Starlette nor Ray here, at any depth (tests/unit/test_structure.py): handlers turn its
exceptions into wire errors at the edge, and the app's lifespan brings Ray and the dispatcher in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

from actors import JobErrorCode, JobKind, all_kinds, job_error
from server.access import Access
from server.config import Settings
from server.errors import ConnectionFull, StoreUnavailable, UnknownKind
from server.jobs import Job, JobState, Watcher
from server.metrics import Metrics
from server.protocol import kinds_frame
from server.store import ResultCache, Saved, Store, open_store, purge_forever
from server.table import JobTable
from server.tenants import Quotas, Tenant

log = logging.getLogger("server.services")

MAX_RESTARTS = 3  # server restarts a job may live through before it fails instead of running again


class Dispatching(Protocol):
    """What admission needs of the pools (the Ray dispatcher, or a fake in the unit tier)."""

    pools: dict[str, Any]

    def start(self) -> None: ...

    async def ready(self) -> None: ...

    async def close(self) -> None: ...

    def check_capacity(self, kind: str, tenant: str = "") -> None: ...

    def position(self, job: Job) -> tuple[int, int | None] | None: ...

    def queued_by_tenant(self) -> dict[str, dict[str, int]]: ...

    def stats(self) -> dict[str, tuple[int, int, int]]: ...

    on_batch: Callable[[str, int], None]  # told how many jobs each actor call carried (metrics)

    def not_started(self) -> dict[str, int]: ...

    def submit(self, job: Job) -> None: ...

    def cancel(self, job: Job) -> bool: ...

    def drop(self, job: Job) -> None: ...


class RayLink(Protocol):
    """The Ray this server uses, as admission sees it (`raysetup.RayInfo`)."""

    @property
    def dashboard_url(self) -> str | None: ...

    @property
    def address(self) -> str: ...

    def connected(self) -> bool: ...


class Origin(Watcher, Protocol):
    """Who submits: a connection, which may hold only so many unfinished jobs."""

    @property
    def unfinished(self) -> int: ...


DispatcherFactory = Callable[[Settings, JobTable, dict[str, JobKind], ResultCache], Dispatching]


class Services:
    """What every request handler shares: settings, kinds, the job store and table, the dispatcher."""

    def __init__(self, settings: Settings, ray_info: RayLink, store: Store, make_dispatcher: DispatcherFactory
                 ) -> None:
        self.settings = settings
        self.access = Access(settings)
        self.ray = ray_info
        self.store = store
        self.owner = settings.identity
        self.kinds: dict[str, JobKind] = {
            name: kind for name, kind in all_kinds().items() if not kind.optional or settings.enable_echo
        }
        self.metrics = Metrics(lambda: self.dispatcher.stats(), lambda: len(self.sessions),
                               lambda: self.dispatcher.queued_by_tenant())
        self.quotas = Quotas(settings.tenant_max_unfinished, settings.tenant_submits_per_s)
        self.table = JobTable(store, self)
        self.dispatcher = make_dispatcher(settings, self.table, self.kinds, store)
        self.dispatcher.on_batch = self.metrics.batch
        self._background: set[asyncio.Task[Any]] = set()
        self.sessions: set[Any] = set()  # the open sockets' sessions
        self._kinds = [
            {"kind": kind.name, "description": kind.description, "schema": kind.schema, "example": kind.example,
             **kind.published, **({"shortcut": dict(zip(("word", "arg", "help"), kind.shortcut, strict=True))}
                                  if kind.shortcut else {}),
             **({"form": kind.form} if kind.form else {}), "streams": kind.streams}
            for kind in self.kinds.values()
        ]
        self._kinds_frame = kinds_frame(self._kinds, None)

    def readiness(self) -> list[str]:
        """Why this server cannot serve jobs now (empty when it can): Ray, the store, the pools."""
        reasons = []
        if not self.ray.connected():
            reasons.append("Ray is not connected")
        if (problem := self.store.health()) is not None:
            reasons.append(problem)
        reasons += [f"{count} {kind} actors have not started yet"
                    for kind, count in self.dispatcher.not_started().items()]
        return reasons

    # The job table's observer: the metrics, and the quotas that count each tenant's unfinished jobs.
    def job_ended(self, job: Job) -> None:
        self.quotas.release(job)
        self.metrics.job_ended(job)

    def store_write(self, seconds: float) -> None:
        self.metrics.store_write(seconds)

    def kinds_frame(self, ref: str | None) -> dict[str, Any]:
        return kinds_frame(self._kinds, ref) if ref is not None else self._kinds_frame

    def admit(self, kind_name: Any, args: Any, ref: str | None = None, origin: Origin | None = None,
              tenant: Tenant | None = None, priority: int = 5) -> tuple[Job, Saved]:
        """Make a job of a submission, or refuse it: the only way in, for the socket and REST alike.

        Checks the kind, the args (its schema, then its meaning), the submitter's and the pool's limits,
        then saves the job and starts it at once: the save and the run overlap, so a store round trip is
        not added to every job. Writes are applied in order, so its result is saved (and pushed) only
        after the returned future says the job itself was saved. Raises UnknownKind, InvalidArgs,
        ConnectionFull, TenantQuota or PoolFull; the future resolves False (the job then withdrawn) if the save
        failed. `tenant` owns the job (its quotas apply, its lane of the kind's queue holds it).
        """
        kind = self.kinds.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            raise UnknownKind(f"unknown kind {kind_name!r}; kinds are {', '.join(sorted(self.kinds))}")
        args = kind.check(args)
        if origin is not None and origin.unfinished >= self.settings.max_jobs_per_connection:
            raise ConnectionFull(f"this connection has {origin.unfinished} unfinished jobs; wait for some results")
        if (problem := self.store.unavailable()) is not None:
            raise StoreUnavailable(f"{problem}; nothing is accepted until it is back")
        self.dispatcher.check_capacity(kind.name, tenant.name if tenant is not None else "")
        job = self._new_job(kind.name, args, ref, tenant, priority)
        saved = self.table.put(job)
        saved.add_done_callback(lambda done: None if done.result() else self._withdraw(job))
        self.run(job)
        return job, saved

    async def admit_failed(self, kind_name: str, args: dict[str, Any], tenant: Tenant | None,
                           error: dict[str, str]) -> Job:
        """A job that fails as soon as it is saved (the old API accepted what it later failed): the tenant's quotas
        apply as to any job; StoreUnavailable if it could not be saved."""
        job = self._new_job(kind_name, args, None, tenant)
        if not await self.table.put(job):
            self._withdraw(job)
            raise StoreUnavailable("the job store cannot save jobs right now; try again")
        self.table.finish(job, JobState.FAILED, error=error)
        return job

    def _new_job(self, kind_name: str, args: dict[str, Any], ref: str | None, tenant: Tenant | None,
                 priority: int = 5) -> Job:
        """A job of `tenant`'s, counted against its quotas (TenantQuota when it is at one)."""
        name = tenant.name if tenant is not None else ""
        self.quotas.check(name, asyncio.get_running_loop().time())
        job = Job(kind_name, args, ref, owner=self.owner, tenant=name, priority=priority)
        self.quotas.count(job)
        return job

    def _withdraw(self, job: Job) -> None:
        self.dispatcher.cancel(job)
        self.table.drop(job)
        self.quotas.release(job)

    async def admit_saved(self, kind_name: Any, args: Any, tenant: Tenant | None = None, priority: int = 5) -> Job:
        """`admit`, once the job is saved (REST answers only then); StoreUnavailable if it could not be."""
        job, saved = self.admit(kind_name, args, tenant=tenant, priority=priority)
        if not await saved:
            raise StoreUnavailable("the job store cannot save jobs right now; try again")
        return job

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

    def lost(self, job_id: str) -> None:
        """Another server owns this job now (it adopted it while this one could not renew its lease): stop this
        server's copy without a result, and follow the job as the other server's, so watchers here still get the
        one result it writes."""
        job = self.table.get(job_id)
        if job is None or job.remote:
            return
        log.warning("job %s belongs to another server now; this server's copy is cancelled", job_id)
        job.remote = True
        self.dispatcher.drop(job)
        job.state, job.result, job.error, job.finished_at, job.published = JobState.RUNNING, None, None, None, False
        self.quotas.release(job)
        self.spawn(self.table.remote_finished(job_id))  # it may have finished there already

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` in the background until it ends or the server stops (`stop_background`)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop_background(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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

    async def recover(self) -> int:
        """Run again the jobs this server had accepted but not finished when it last stopped."""
        jobs = await self.store.unfinished(self.owner)
        for job in jobs:
            self._resume(job)
        if jobs:
            log.info("resubmitted %d jobs left unfinished by the last run", len(jobs))
        return len(jobs)

    async def adopt_forever(self, every: float) -> None:
        """Take over, and run, the unfinished jobs of servers sharing the store whose lease ran out."""
        while True:
            try:
                jobs = await self.store.adopt(self.owner)
            except Exception:
                log.exception("looking for jobs of dead servers failed")
                jobs = []
            for job in jobs:
                self._resume(job)
            if jobs:
                log.warning("adopted %d unfinished jobs of servers that stopped answering", len(jobs))
            await asyncio.sleep(every)

    def _resume(self, saved: Job) -> None:
        """Run a job that a stopped server left unfinished (this one's before a restart, or a dead one's)."""
        job = self.table.get(saved.id) or saved  # someone here may already watch it (followed as remote)
        job.remote, job.running, job.result, job.error = False, None, None, None
        job.fence = saved.fence  # the token this server's writes of it must carry now
        job.restarts = saved.restarts + 1
        job.state = JobState.QUEUED
        job.owner = self.owner  # it is this server's now (saved again below)
        self.quotas.count(job)
        if job.restarts > MAX_RESTARTS:
            self.table.add(job)
            message = f"the server stopped {job.restarts - 1} times while this job ran; giving up"
            error = job_error(JobErrorCode.WORKER_LOST, message)
            self.table.finish(job, JobState.FAILED, error=error)
        else:
            self.table.put(job).add_done_callback(lambda _: self.run(job))


@asynccontextmanager
async def services_context(settings: Settings, ray_info: RayLink, store: Store | None,
                           make_dispatcher: DispatcherFactory) -> AsyncIterator[Services]:
    """Everything the app shares, started in order and stopped in reverse; `store` replaces the configured one.
    Every task started here is awaited before the dispatcher and the store close."""
    async with AsyncExitStack() as stack:
        if store is None:
            store = open_store(settings.store, settings.data_dir, settings.result_ttl, settings.max_finished_jobs,
                               settings.lease_ttl)
        await store.open()
        stack.push_async_callback(store.close)
        services = Services(settings, ray_info, store, make_dispatcher)
        services.dispatcher.start()
        stack.push_async_callback(services.dispatcher.close)
        stack.push_async_callback(services.stop_background)
        await store.listen(lambda job_id: services.spawn(services.table.remote_finished(job_id)),
                           services.cancel_requested, services.lost)
        services.spawn(store.hold_lease(services.owner))
        await services.recover()
        services.spawn(services.adopt_forever(settings.lease_ttl / 2))
        services.spawn(purge_forever(store, settings.result_ttl))
        yield services
