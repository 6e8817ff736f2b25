"""The job table: the jobs this server has in hand, and the one path by which a result reaches its watchers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from actors import JobErrorCode, job_error
from server.jobs import Job, JobState, Watcher
from server.protocol import progress_frame, result_frame
from server.store import JobStore, Saved

log = logging.getLogger("server.table")


class Observer(Protocol):
    """Told of every job this server ended and of every result write (the metrics)."""

    def job_ended(self, job: Job) -> None: ...

    def store_write(self, seconds: float) -> None: ...


class JobTable:
    """The jobs this server has in hand: unfinished ones, and remote ones someone here watches.

    A job's terminal result is saved to the store before any watcher sees it; then the job leaves
    memory, and whoever asks for it later reads it back from the store. Jobs of other servers sharing
    the store are looked up there and followed until they finish.
    """

    SAVE_RETRIES = 6  # a result the store could not save is tried again this many times (backing off)
    STORE_FAILED = "the job store could not save this job's result; it runs again when the server restarts"

    def __init__(self, store: JobStore, observer: Observer | None = None) -> None:
        self.store = store
        self.observer = observer
        self.jobs: dict[str, Job] = {}

    def add(self, job: Job) -> Job:
        self.jobs[job.id] = job
        return job

    def drop(self, job: Job) -> None:
        self.jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def lookup(self, job_id: str) -> Job | None:
        """A job from memory, or else from the store (finished, of another server, or of before a restart)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        job = await self.store.get(job_id)
        if job is None:
            return None
        known = self.jobs.get(job_id)  # it may have arrived while the store answered
        if known is not None:
            return known
        job.remote = True
        if not job.published:
            self.jobs[job.id] = job  # followed until its owner finishes it
        return job

    async def remote_finished(self, job_id: str) -> None:
        """Another server finished a job: push its saved result to the watchers here."""
        job = self.jobs.get(job_id)
        if job is None or not job.remote or job.published:
            return
        saved = await self.store.get(job_id)
        if saved is None or not saved.finished or job.published:
            return
        job.state, job.result, job.error, job.finished_at = saved.state, saved.result, saved.error, saved.finished_at
        self._publish(job)

    def start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        job.started_at = time.time()
        self.store.start(job)

    def watch(self, job: Job, watcher: Watcher, ref: str | None = None, seen: int = 0) -> None:
        """Send `watcher` the job's result: now if it is finished and saved, else when it is. A new watcher of a
        running job first gets the `progress` frames after `seq` `seen` that the job has sent, then the live ones."""
        if job.published:
            watcher.push(result_frame(job, ref))
            return
        if watcher not in job.watchers:
            for seq in range(seen + 1, len(job.progress) + 1):
                watcher.push(progress_frame(job, seq, job.progress[seq - 1], ref))
        job.watchers[watcher] = ref

    def progress(self, job: Job, data: Any) -> None:
        """A running job's progress: kept with the job until it ends (for watchers to come), pushed to those here."""
        if job.finished:
            return
        job.progress.append(data)
        seq = len(job.progress)
        for watcher, ref in job.watchers.items():
            watcher.push(progress_frame(job, seq, data, ref))

    def finish(self, job: Job, state: JobState, result: Any = None, error: dict[str, str] | None = None) -> bool:
        """End a job once: save its result, then push it to every watcher. False if it had already ended."""
        if job.finished:
            return False
        job.state = state
        job.result = result
        job.error = error
        job.finished_at = time.time()
        job.running = None
        self._save(job, 0)
        return True

    def put(self, job: Job) -> Saved:
        """Keep `job` here and save it: every write of a job goes through the table, which times it."""
        self.jobs[job.id] = job
        return self._timed(self.store.put(job))

    def _timed(self, saved: Saved) -> Saved:
        if self.observer is not None:
            asked, observer = time.perf_counter(), self.observer
            saved.add_done_callback(lambda _: observer.store_write(time.perf_counter() - asked))
        return saved

    def _save(self, job: Job, attempt: int) -> None:
        self._timed(self.store.finish(job)).add_done_callback(
            lambda done: self._saved(job, done.result(), attempt))

    def _saved(self, job: Job, saved: bool, attempt: int) -> None:
        if job.remote and not job.finished:
            return  # lost to another server meanwhile (the store refused this write): its result comes from there
        if saved:
            self._publish(job)
        elif attempt < self.SAVE_RETRIES:
            delay = min(0.25 * 2 ** attempt, 5.0)
            log.warning("the result of job %s was not saved; trying again in %g s", job.id, delay)
            asyncio.get_running_loop().call_later(delay, self._save, job, attempt + 1)
        else:
            # The store still holds the job as unfinished, so a restart runs it again; the watchers are told now.
            log.error("the result of job %s could not be saved; telling its watchers", job.id)
            job.state, job.result = JobState.FAILED, None
            job.error = job_error(JobErrorCode.INTERNAL, self.STORE_FAILED)
            self._publish(job)
            self.jobs[job.id] = job  # the store would call it unfinished; this server answers for it instead

    def _publish(self, job: Job) -> None:
        if self.observer is not None and not job.remote:
            self.observer.job_ended(job)
        job.published = True
        watchers, job.watchers = job.watchers, {}
        self.jobs.pop(job.id, None)
        for watcher, ref in watchers.items():
            watcher.push(result_frame(job, ref))
            watcher.forget(job)  # after the push: a watcher may close once it has nothing left to wait for
