"""The job store: every job written before it is accepted, every result before it is pushed.

Three backends behind one interface (`interface.Store`: `JobStore`, `ResultCache`, `ClusterEvents`), one module
each: `memory` (nothing survives a restart; benchmarks), `sqlite` (the embedded default, one file under the data
dir), and `redis://` (shared by several servers, with pub/sub telling each server what the others finished).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from server.store.interface import ClusterEvents, JobStore, ResultCache, Saved, Store
from server.store.memory import MemoryStore
from server.store.redis import RedisStore
from server.store.sqlite import SqliteStore, quick_check

__all__ = ["ClusterEvents", "JobStore", "MemoryStore", "RedisStore", "ResultCache", "Saved", "SqliteStore", "Store",
           "open_store", "purge_forever", "quick_check"]

log = logging.getLogger("server.store")


def open_store(kind: str, data_dir: Path, ttl: float, max_finished: int = 100_000, lease_ttl: float = 15.0
               ) -> Store:
    """The backend AMI_STORE names: `memory`, `sqlite` (a file in `data_dir`) or a `redis://` URL."""
    if kind == "memory":
        return MemoryStore(max_finished)
    if kind == "sqlite":
        return SqliteStore(data_dir / "jobs.sqlite3")
    return RedisStore(kind, ttl, lease_ttl)


async def purge_forever(store: JobStore, ttl: float, every: float = 3600.0) -> None:
    """Delete results older than the TTL, once an `every` seconds."""
    while True:
        try:
            removed = await store.purge(time.time() - ttl)
            if removed:
                log.info("purged %d expired jobs", removed)
        except Exception:
            log.exception("purging expired jobs failed")
        await asyncio.sleep(every)
