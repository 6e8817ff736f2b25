"""The `memory` backend: nothing survives a restart (benchmarks, and tests that need no file)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from server.jobs import Job
from server.store.interface import Saved, SingleServer, Store, cache_key, from_record, saved_now, to_record


class MemoryStore(SingleServer):
    """Keeps the last `max_finished` results and MEMORY_CACHE cached results in memory; every write is answered
    at once, durable for as long as the process lives."""

    MEMORY_CACHE = 10_000

    def __init__(self, max_finished: int = 100_000) -> None:
        self._results: dict[tuple[str, str], Any] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_finished = max_finished

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def health(self) -> str | None:
        return None

    def unavailable(self) -> str | None:
        return None

    def put(self, job: Job) -> Saved:
        return saved_now()

    def finish(self, job: Job) -> Saved:
        self._finished[job.id] = to_record(job)
        while len(self._finished) > self.max_finished:
            self._finished.popitem(last=False)
        return saved_now()

    async def get(self, job_id: str) -> Job | None:
        record = self._finished.get(job_id)
        return None if record is None else from_record(record)

    async def unfinished(self, owner: str) -> list[Job]:
        return []

    async def purge(self, before: float) -> int:
        expired = [job_id for job_id, record in self._finished.items() if (record["finished_at"] or 0) < before]
        for job_id in expired:
            del self._finished[job_id]
        return len(expired)

    async def cached(self, kind: str, args: dict[str, Any]) -> Any:
        return self._results.get((kind, cache_key(args)))

    def remember(self, kind: str, args: dict[str, Any], result: Any) -> None:
        if len(self._results) >= self.MEMORY_CACHE:
            self._results.pop(next(iter(self._results)))
        self._results[(kind, cache_key(args))] = result


_: type[Store] = MemoryStore  # the conformance check: mypy fails here if MemoryStore stops being a Store
