"""Jobs, their states, and who watches them."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Watcher(Protocol):
    """Something that receives a job's `result` frame: a WebSocket session."""

    def push(self, frame: dict[str, Any]) -> None: ...

    def forget(self, job: Job) -> None: ...


@dataclass(eq=False, slots=True)
class Job:
    kind: str
    args: dict[str, Any]
    ref: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, str] | None = None
    attempts: int = 0
    watchers: dict[Watcher, str | None] = field(default_factory=dict)
    running: Any = None  # the dispatcher's handle on the call in flight

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def result_frame(self, ref: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "result", "job": self.id, "kind": self.kind, "status": str(self.state)}
        ref = self.ref if ref is None else ref
        if ref is not None:
            frame["ref"] = ref
        if self.state is JobState.SUCCEEDED:
            frame["result"] = self.result
        elif self.error is not None:
            frame["error"] = self.error
        if self.finished_at is not None:
            frame["elapsed_ms"] = round((self.finished_at - self.created_at) * 1000, 3)
        return frame

    def status_frame(self, ref: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "status", "job": self.id, "kind": self.kind, "state": str(self.state)}
        if ref is not None:
            frame["ref"] = ref
        return frame


class JobTable:
    """Every job this server knows: unfinished ones, and finished ones until they expire."""

    def __init__(self, max_finished: int = 100_000, ttl: float = 48 * 3600.0) -> None:
        self.jobs: dict[str, Job] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self.max_finished = max_finished
        self.ttl = ttl

    def add(self, job: Job) -> Job:
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def start(self, job: Job) -> None:
        job.state = JobState.RUNNING
        job.started_at = time.time()

    def watch(self, job: Job, watcher: Watcher, ref: str | None = None) -> None:
        """Send `watcher` the job's result: now if it is finished, else when it finishes."""
        if job.finished:
            watcher.push(job.result_frame(ref))
        else:
            job.watchers[watcher] = ref

    def finish(self, job: Job, state: JobState, result: Any = None, error: dict[str, str] | None = None) -> bool:
        """End a job once and push its result to every watcher; False if it had already ended."""
        if job.finished:
            return False
        job.state = state
        job.result = result
        job.error = error
        job.finished_at = time.time()
        job.running = None
        watchers, job.watchers = job.watchers, {}
        for watcher, ref in watchers.items():
            watcher.forget(job)
            watcher.push(job.result_frame(ref))
        self._finished[job.id] = job.finished_at
        self._expire(job.finished_at)
        return True

    def _expire(self, now: float) -> None:
        finished = self._finished
        while finished and (len(finished) > self.max_finished or next(iter(finished.values())) < now - self.ttl):
            job_id, _ = finished.popitem(last=False)
            self.jobs.pop(job_id, None)
