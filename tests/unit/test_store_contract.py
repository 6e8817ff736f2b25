"""The store contract on the two backends that need no server: memory and SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.jobs import Job, JobState
from server.store import MemoryStore, SqliteStore
from tests.helpers import run
from tests.store_contract import Opener, StoreContract


class TestMemoryStore(StoreContract):
    durable = False

    @pytest.fixture
    def make_store(self) -> Opener:
        return MemoryStore


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Opener:
        return lambda: SqliteStore(tmp_path / "jobs.sqlite3")


def test_the_memory_store_keeps_a_bounded_number_of_results() -> None:
    async def scenario() -> None:
        store = MemoryStore(max_finished=3)
        await store.open()
        jobs = [Job("echo", {"n": n}) for n in range(5)]
        for job in jobs:
            job.state, job.result = JobState.SUCCEEDED, {"n": job.args["n"]}
            assert await store.finish(job)
        assert [await store.get(job.id) is None for job in jobs] == [True, True, False, False, False]
        again = await store.get(jobs[4].id)
        assert again is not None and again.result == {"n": 4} and again.published

    run(scenario())


def test_one_bad_record_fails_only_its_own_write(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        store = SqliteStore(tmp_path / "jobs.sqlite3")
        await store.open()
        try:
            outcomes = [store.put(Job("echo", {}, ref)) for ref in ("fine", "\ud800", "also fine")]  # not UTF-8
            results = list(await asyncio.gather(*outcomes))
            results.append(await store.put(Job("echo", {}, "later")))
            assert store.health() is None, "the writer goes on"
            return results
        finally:
            await store.close()

    assert run(scenario()) == [True, False, True, True]
