"""The behaviour every job store backend shares, written once: `tests/unit/test_store_contract.py` runs it against
the memory and SQLite backends, `tests/test_store.py` against a real Redis server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from server.jobs import Job, JobState
from server.protocol import result_frame
from server.store import Store
from server.table import JobTable
from tests.helpers import run

Opener = Callable[[], Store]
S = TypeVar("S", bound=Store)


@asynccontextmanager
async def opened(make: Callable[[], S]) -> AsyncIterator[S]:
    store = make()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def finished(job: Job, state: JobState = JobState.SUCCEEDED, result: Any = None, age: float = 0.0) -> Job:
    job.state, job.result, job.finished_at = state, result, time.time() - age
    return job


class Recorder:
    """A watcher that keeps the frames pushed to it."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    def push(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self.arrived.set()

    def forget(self, job: Job) -> None:
        pass


class StoreContract:
    """Subclasses name the backend: a `make_store` fixture (each call a new store over the same data), whether
    its jobs outlive the store object (`durable`), whether several servers share it (`shared`), and whether
    finished records expire by themselves instead of being purged (`expires_itself`)."""

    durable = True
    shared = False
    expires_itself = False

    def test_a_finished_job_reads_back_whole(self, make_store: Opener) -> None:
        async def scenario() -> None:
            job = Job("echo", {"x": [1, "two"]}, "r1", owner="a", tenant="t", priority=2)
            async with opened(make_store) as store:
                assert store.health() is None and store.unavailable() is None
                assert await store.put(job)
                job.started_at = time.time()
                assert await store.finish(finished(job, result={"x": [1, "two"]}))
                again = await store.get(job.id)
                assert again is not None and again.published
                assert (again.kind, again.args, again.ref, again.state, again.result, again.tenant, again.priority,
                        again.owner) == ("echo", {"x": [1, "two"]}, "r1", JobState.SUCCEEDED, {"x": [1, "two"]},
                                         "t", 2, "a")
                assert again.started_at == job.started_at and again.finished_at == job.finished_at
                assert result_frame(again) == result_frame(job)
                assert await store.get("never-issued") is None

        run(scenario())

    def test_a_failure_keeps_its_error_and_restarts(self, make_store: Opener) -> None:
        async def scenario() -> None:
            job = Job("audio.length", {"url": "http://x/a.wav"}, None, owner="a", restarts=2)
            async with opened(make_store) as store:
                await store.put(job)
                job.error = {"code": "fetch_failed", "message": "HTTP 503 from http://x/a.wav"}
                assert await store.finish(finished(job, JobState.FAILED))
                again = await store.get(job.id)
                assert again is not None
                assert (again.error, again.restarts, again.state) == (job.error, 2, JobState.FAILED)
                assert await store.unfinished("a") == []

        run(scenario())

    def test_unfinished_jobs_are_what_a_restart_runs_again(self, make_store: Opener) -> None:
        async def scenario() -> None:
            done = Job("echo", {}, None, owner="a")
            waiting = Job("euro.results", {"date": "2024-03-26"}, None, owner="a")
            other = Job("echo", {}, None, owner="b")
            async with opened(make_store) as store:
                assert all(await asyncio.gather(*(store.put(job) for job in (done, waiting, other))))
                assert await store.finish(finished(done, result={}))
            async with opened(make_store) as store:
                mine = [job.id for job in await store.unfinished("a")]
                if not self.durable:
                    assert mine == [] and await store.get(done.id) is None, "nothing outlives the store"
                elif self.shared:  # servers share the store: each resumes its own
                    assert mine == [waiting.id]
                    assert [job.id for job in await store.unfinished("b")] == [other.id]
                else:  # one server opens a data dir at a time: it resumes all of it
                    assert mine == [waiting.id, other.id]
                if self.durable:
                    again = await store.get(done.id)
                    assert again is not None and again.state is JobState.SUCCEEDED

        run(scenario())

    def test_thousands_of_writes_are_answered_in_order(self, make_store: Opener) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                order: list[int] = []
                all_done = asyncio.Event()
                count = 3000

                def callback(index: int) -> Callable[[asyncio.Future[bool]], None]:
                    def done(saved: asyncio.Future[bool]) -> None:
                        assert saved.result()
                        order.append(index)
                        if len(order) == count:
                            all_done.set()

                    return done

                for index in range(count):
                    store.put(Job("echo", {"n": index}, None, owner="bulk")).add_done_callback(callback(index))
                await asyncio.wait_for(all_done.wait(), 30)
                assert order == list(range(count))
                assert len(await store.unfinished("bulk")) == (count if self.durable else 0)

        run(scenario())

    def test_the_table_pushes_a_result_only_after_it_is_saved(self, make_store: Opener) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                table = JobTable(store)
                job = table.add(Job("echo", {"a": 1}, "r", owner="a"))
                await store.put(job)
                watcher = Recorder()
                table.watch(job, watcher)
                assert table.finish(job, JobState.SUCCEEDED, result={"a": 1})
                assert not table.finish(job, JobState.FAILED), "a job ends once"
                assert watcher.frames == [], "nothing is pushed before the store has answered the save"
                await asyncio.wait_for(watcher.arrived.wait(), 10)
                saved = await store.get(job.id)
                assert saved is not None and saved.state is JobState.SUCCEEDED
                assert watcher.frames == [result_frame(job)]

        run(scenario())

    def test_results_of_cacheable_kinds_are_kept_for_reuse(self, make_store: Opener) -> None:
        draw = {"date": "2024-03-26", "numbers": [2, 13, 14, 26, 29], "stars": [5, 6]}

        async def scenario() -> None:
            async with opened(make_store) as store:
                assert await store.cached("euro.results", {"date": "2024-03-26"}) is None
                store.remember("euro.results", {"date": "2024-03-26"}, draw)
                await store.put(Job("echo", {}, None, owner="flush"))  # writes are applied in order
                assert await store.cached("euro.results", {"date": "2024-03-26"}) == draw
                assert await store.cached("euro.results", {"date": "2024-03-29"}) is None
                assert await store.cached("audio.length", {"date": "2024-03-26"}) is None
            async with opened(make_store) as store:
                kept = await store.cached("euro.results", {"date": "2024-03-26"})
                assert kept == (draw if self.durable else None)

        run(scenario())

    def test_old_results_are_purged_or_expire(self, make_store: Opener) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                old, new, running = (Job("echo", {}, None, owner="a") for _ in range(3))
                for job in (old, new, running):
                    await store.put(job)
                await store.finish(finished(old, result={}, age=49 * 3600))
                await store.finish(finished(new, result={}, age=60))
                removed = await store.purge(time.time() - 48 * 3600)
                assert removed == (0 if self.expires_itself else 1)
                assert (await store.get(old.id) is None) is not self.expires_itself
                assert await store.get(new.id) is not None
                assert (await store.get(running.id) is not None) is self.durable

        run(scenario())

    def test_listening_is_ready_once_listen_returns(self, make_store: Opener) -> None:
        async def scenario() -> None:
            async with opened(make_store) as store:
                heard: list[str] = []
                await asyncio.wait_for(store.listen(heard.append, heard.append, heard.append), 10)
                assert await store.adopt("a") == [] and heard == []

        run(scenario())
