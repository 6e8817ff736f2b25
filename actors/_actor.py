"""The one Ray actor class: it hosts a kind's plain worker and turns its outcome into plain data."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from actors._base import JobErrorCode, JobFailed, WorkerConfig, job_error
from actors._fetch import Scope, job_scope

log = logging.getLogger("actors")

REPORT_EVERY = 5.0  # seconds between handing the actor's job figures to Ray's metrics (a call per job costs)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class KindActor:
    """Runs one kind's worker. Becomes a Ray actor with `ray.remote(KindActor)` where pools are built.

    `run` never raises for a job's own failure: it returns `{"ok": result}` or
    `{"error": {"code", "message"}}`, so the server can tell a failed job from a lost worker.
    A sync worker runs in a thread pool as large as the kind's concurrency (asyncio's default has as
    few as 6 threads); a cancelled job stops its downloads, so its thread is free at once.
    """

    def __init__(self, kind_module: str, config: WorkerConfig) -> None:
        from actors import load_kind

        kind = load_kind(kind_module)  # this kind's module only: another kind's libraries never load here
        if kind is None:
            raise RuntimeError(f"{kind_module} defines no job kind")
        self.kind = kind
        self.worker = self.kind.worker(config)
        self._is_async = inspect.iscoroutinefunction(self.worker.run)
        self._threads = None if self._is_async else ThreadPoolExecutor(
            self.kind.pool.max_concurrency, thread_name_prefix=f"{self.kind.actor_name}-job")
        self._ended: list[tuple[str, float]] = []  # (outcome, seconds) since the last report to Ray
        self._reporter: asyncio.Task[None] | None = None
        warmup = getattr(self.worker, "warmup", None)
        if warmup is not None:
            warmup()

    def node_id(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_to_ray())
        started = time.perf_counter()
        outcome = "cancelled"
        try:
            result = await self._run(args)
            outcome = "succeeded" if "ok" in result else "failed"
            return result
        finally:
            self._ended.append((outcome, time.perf_counter() - started))

    async def run_many(self, many: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Several jobs in one call (kinds that batch), called with `num_returns="streaming"`: yields
        `{"done": [{"i": index, "ok"|"error": ...}, ...]}` as jobs finish, those that finished together in one item,
        so each result goes back the moment it is there, and a job's failure is its own."""
        batch_runner = getattr(self.worker, "run_batch", None)
        if batch_runner is not None:
            outcomes = await self._run_batch(batch_runner, many)
            yield {"done": [{"i": index, **outcome} for index, outcome in enumerate(outcomes)]}
            return
        tasks = {asyncio.ensure_future(self.run(args)): index for index, args in enumerate(many)}
        waiting = set(tasks)
        try:
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                yield {"done": [{"i": tasks[task], **task.result()} for task in done]}
        finally:
            for task in waiting:
                task.cancel()

    async def _run_batch(self, runner: Callable[[list[dict[str, Any]]], Any], many: list[dict[str, Any]]
                         ) -> list[dict[str, Any]]:
        """The worker's own `run_batch`: a list of results, or of JobFailed for jobs that failed alone."""
        try:
            if inspect.iscoroutinefunction(runner):
                values = await runner(many)
            else:
                values = await asyncio.get_running_loop().run_in_executor(self._threads, runner, many)
        except Exception:
            log.exception("%s worker failed on a batch of %d", self.kind.name, len(many))
            error = job_error(JobErrorCode.INTERNAL, "the worker failed unexpectedly; see the server log")
            return [{"error": error}] * len(many)
        return [{"error": value.error} if isinstance(value, JobFailed) else {"ok": value} for value in values]

    async def stream(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """For a kind whose worker is a generator, called with `num_returns="streaming"`: each value it yields as
        `{"progress": value}`, each handed to the server as soon as it is yielded, then `{"ok": result}` (what it
        returned) or `{"error": ...}`. The generator runs in a thread; a cancelled job stops it at its next yield."""
        if self._reporter is None:
            self._reporter = asyncio.create_task(self._report_to_ray())
        started = time.perf_counter()
        outcome = "cancelled"
        scope = Scope()
        job_scope.set(scope)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        context = contextvars.copy_context()
        driving = loop.run_in_executor(self._threads, context.run, self._drive, args, put, scope)
        try:
            while True:
                what, value = await items.get()
                if what == "progress":
                    yield {"progress": value}
                    continue
                outcome = "succeeded" if what == "ok" else "failed"
                yield {what: value}
                break
        finally:
            if outcome == "cancelled":
                scope.stop("cancelled")
            await asyncio.shield(driving)  # the thread ends at the generator's next yield, or its download's stop
            self._ended.append((outcome, time.perf_counter() - started))

    def _drive(self, args: dict[str, Any], put: Callable[[tuple[str, Any]], None], scope: Scope) -> None:
        try:
            generator = self.worker.run(args)
            while scope.stopped is None:
                try:
                    put(("progress", next(generator)))
                except StopIteration as returned:
                    put(("ok", returned.value))
                    return
            generator.close()
        except JobFailed as exc:
            put(("error", exc.error))
        except Exception:
            log.exception("%s worker failed on %r", self.kind.name, args)
            put(("error", job_error(JobErrorCode.INTERNAL, "the worker failed unexpectedly; see the server log")))

    async def _run(self, args: dict[str, Any]) -> dict[str, Any]:
        scope = Scope()
        job_scope.set(scope)  # this task's own context, copied into the worker's thread
        try:
            if self._is_async:
                value = await self.worker.run(args)
            else:
                context = contextvars.copy_context()
                value = await asyncio.get_running_loop().run_in_executor(self._threads, context.run,
                                                                         self.worker.run, args)
            return {"ok": value}
        except JobFailed as exc:
            return {"error": exc.error}
        except asyncio.CancelledError:
            scope.stop("cancelled")
            raise
        except Exception:
            log.exception("%s worker failed on %r", self.kind.name, args)
            message = "the worker failed unexpectedly; see the server log"
            return {"error": job_error(JobErrorCode.INTERNAL, message)}

    async def _report_to_ray(self) -> None:
        """`ami_actor_jobs_total{kind,outcome}` and `ami_actor_run_seconds{kind}` (the time a job spent in its
        actor, download included) in Ray's metrics, handed over every REPORT_EVERY s from a thread."""
        from ray.util import metrics

        try:
            jobs = metrics.Counter("ami_actor_jobs_total", "jobs an actor ran, by kind and outcome",
                                   tag_keys=("kind", "outcome"))
            seconds = metrics.Histogram("ami_actor_run_seconds", "time a job ran in its actor",
                                        boundaries=list(RUN_BUCKETS), tag_keys=("kind",))
        except Exception:  # metrics are for operators: their failure must never stop a job
            log.exception("Ray's metrics are not available in this actor")
            return
        kind = self.kind.name

        def tell(ended: list[tuple[str, float]]) -> None:
            counts: dict[str, int] = {}
            for outcome, spent in ended:
                counts[outcome] = counts.get(outcome, 0) + 1
                seconds.observe(spent, tags={"kind": kind})
            for outcome, count in counts.items():
                jobs.inc(count, tags={"kind": kind, "outcome": outcome})

        while True:
            await asyncio.sleep(REPORT_EVERY)
            ended, self._ended = self._ended, []
            if ended:
                try:
                    await asyncio.to_thread(tell, ended)
                except Exception:
                    log.exception("Ray's metrics could not be updated")


def named_actor(worker_name: str) -> type[KindActor]:
    """The one envelope under the worker's own class name (AudioLength, EuroResults, Echo), so that Ray's
    dashboard and its per-class metrics tell the kinds apart. Wrap it with `ray.remote` where pools are built."""
    return type(worker_name, (KindActor,), {"__module__": KindActor.__module__})
