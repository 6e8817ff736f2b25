"""Stand-ins for Ray's pools in the unit tier: the server's own code, all of it, on no Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from actors import JobKind
from server.app import create_app
from server.config import Settings
from server.errors import PoolFull
from server.jobs import Job, JobState
from server.store import MemoryStore, ResultCache, Saved, Store
from server.store.interface import saved_now
from server.table import JobTable


class FakeDispatcher:
    """Runs every job by echoing its args on the next turn of the loop; `{"hold": true}` jobs wait to be
    cancelled. Capacity counts the held ones against AMI_MAX_PENDING, as a pool's queue would."""

    def __init__(self, settings: Settings, table: JobTable, kinds: dict[str, JobKind], cache: ResultCache) -> None:
        self.settings = settings
        self.table = table
        self.pools: dict[str, Any] = dict.fromkeys(kinds)
        self.held: list[Job] = []
        self.on_batch: Callable[[str, int], None] = lambda kind, size: None

    def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> dict[str, tuple[int, int, int]]:
        return {kind: (1, len(self.held), len(self.held)) for kind in self.pools}

    def not_started(self) -> dict[str, int]:
        return {}

    def position(self, job: Job) -> tuple[int, int | None] | None:
        return None

    def queued_by_tenant(self) -> dict[str, dict[str, int]]:
        return {}

    def check_capacity(self, kind: str, tenant: str = "") -> None:
        if kind not in self.pools:
            raise PoolFull(f"no actors serve {kind} on this server")
        if len(self.held) >= self.settings.max_pending:
            raise PoolFull(f"{len(self.held)} {kind} jobs are waiting; try again later")

    def submit(self, job: Job) -> None:
        self.table.start(job)
        if job.args.get("hold"):
            self.held.append(job)
        else:
            asyncio.get_running_loop().call_soon(self.table.finish, job, JobState.SUCCEEDED, job.args)

    def drop(self, job: Job) -> None:
        if job in self.held:
            self.held.remove(job)

    def cancel(self, job: Job) -> bool:
        if job.finished:
            return False
        if job in self.held:
            self.held.remove(job)
        self.table.finish(job, JobState.CANCELLED)
        return True


class RefusingStore(MemoryStore):
    """The memory store, but every save fails while `refusing` is set (a full disk)."""

    refusing = False

    def put(self, job: Job) -> Saved:
        return saved_now(not self.refusing)


def unit_settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(data_dir=tmp_path, store="memory", enable_echo=True, allowed_hosts=("testserver",),
                    euro_url="http://127.0.0.1:9/", dashboard=False).replace(**changes)


@contextmanager
def unit_client(settings: Settings, store: Store | None = None) -> Iterator[TestClient]:
    """The whole app on Starlette's test client, with the fake pools: no Ray, no sockets."""
    app = create_app(settings, store or MemoryStore(), make_dispatcher=FakeDispatcher)
    with TestClient(app) as client:
        yield client
