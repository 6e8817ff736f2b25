"""The job model: a job, its states, and what watches it. Nothing here knows the table, store or wire."""

from __future__ import annotations

import os
import time
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
    """Something that receives a job's `progress` and `result` frames: a WebSocket session, or the old API's
    callback log."""

    def push(self, frame: dict[str, Any]) -> None: ...

    def forget(self, job: Job) -> None: ...


@dataclass(eq=False, slots=True)
class Job:
    kind: str
    args: dict[str, Any]
    ref: str | None = None
    id: str = field(default_factory=lambda: os.urandom(16).hex())  # unguessable: an id lets one watch or cancel
    state: JobState = JobState.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: dict[str, str] | None = None
    owner: str = ""  # the server that runs it (and resubmits it after a crash)
    tenant: str = ""  # who submitted it: a token's tenant name, or `@address` without tokens
    priority: int = 5  # 0-9, 9 first: orders jobs within one tenant's lane only
    fence: int = 0  # shared stores: the fencing token this server's writes of the job carry (grows per adoption)
    restarts: int = 0  # times a server restarted with this job unfinished
    attempts: int = 0
    watchers: dict[Watcher, str | None] = field(default_factory=dict)
    progress: list[Any] = field(default_factory=list)  # what a streaming kind yielded so far (seq = index + 1)
    running: Any = None  # the dispatcher's handle on the call in flight
    published: bool = False  # the terminal result is saved and has been pushed
    remote: bool = False  # runs on another server sharing the store

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def visible_state(self) -> JobState:
        """The state clients see: a result is theirs only once it is saved."""
        return JobState.RUNNING if self.finished and not self.published else self.state
