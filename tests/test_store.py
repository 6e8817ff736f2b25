"""The job store interface, run against each real backend: SQLite files and a real Redis server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from server.jobs import Job, JobState
from server.protocol import result_frame
from server.store import RedisStore, SqliteStore, Store
from server.table import JobTable
from tests.helpers import run

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "jobs.sqlite3")
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return lambda: RedisStore(url, ttl=3600)


@asynccontextmanager
async def opened(make: Opener) -> AsyncIterator[Store]:
    store = make()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def saved(write: Callable[[Job], asyncio.Future[bool]], job: Job) -> bool:
    return await write(job)


def test_jobs_survive_reopening_with_their_results(make_store: Opener) -> None:
    async def scenario() -> None:
        done = Job("echo", {"x": [1, "two"]}, "r1", owner="a")
        waiting = Job("euro.results", {"date": "2024-03-26"}, None, owner="a")
        other = Job("echo", {}, None, owner="b")
        async with opened(make_store) as store:
            assert all(await asyncio.gather(*(saved(store.put, job) for job in (done, waiting, other))))
            done.state, done.result, done.finished_at = JobState.SUCCEEDED, {"x": [1, "two"]}, time.time()
            assert await saved(store.finish, done)
        async with opened(make_store) as store:
            again = await store.get(done.id)
            assert again is not None and again.published
            assert (again.kind, again.args, again.ref, again.state, again.result) == (
                "echo", {"x": [1, "two"]}, "r1", JobState.SUCCEEDED, {"x": [1, "two"]})
            assert result_frame(again)["status"] == "succeeded"
            if isinstance(store, SqliteStore):  # one server opens a data dir at a time: it resumes all of it
                assert [job.id for job in await store.unfinished("a")] == [waiting.id, other.id]
            else:  # servers share Redis: each resumes its own
                assert [job.id for job in await store.unfinished("a")] == [waiting.id]
                assert [job.id for job in await store.unfinished("b")] == [other.id]
            assert await store.get("never-issued") is None

    run(scenario())


def test_failures_keep_their_error_and_restarts_count(make_store: Opener) -> None:
    async def scenario() -> None:
        job = Job("audio.length", {"url": "http://x/a.wav"}, None, owner="a", restarts=2)
        async with opened(make_store) as store:
            await saved(store.put, job)
            job.state, job.finished_at = JobState.FAILED, time.time()
            job.error = {"code": "fetch_failed", "message": "HTTP 503 from http://x/a.wav"}
            await saved(store.finish, job)
            again = await store.get(job.id)
            assert again is not None
            assert again.error == job.error and again.restarts == 2 and again.state is JobState.FAILED
            assert await store.unfinished("a") == []

    run(scenario())


def test_thousands_of_writes_are_batched_and_all_called_back_in_order(make_store: Opener) -> None:
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

            jobs = [Job("echo", {"n": n}, None, owner="bulk") for n in range(count)]
            for index, job in enumerate(jobs):
                store.put(job).add_done_callback(callback(index))
            await asyncio.wait_for(all_done.wait(), 30)
            assert order == list(range(count))
            assert len(await store.unfinished("bulk")) == count

    run(scenario())


def test_table_pushes_a_result_only_after_it_is_saved(make_store: Opener) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.frames: list[dict[str, Any]] = []
            self.arrived = asyncio.Event()

        def push(self, frame: dict[str, Any]) -> None:
            self.frames.append(frame)
            self.arrived.set()

        def forget(self, job: Job) -> None:
            pass

    async def scenario() -> None:
        async with opened(make_store) as store:
            table = JobTable(store)
            job = table.add(Job("echo", {"a": 1}, "r", owner="a"))
            await saved(store.put, job)
            watcher = Recorder()
            table.watch(job, watcher)
            assert table.finish(job, JobState.SUCCEEDED, result={"a": 1})
            assert not table.finish(job, JobState.FAILED), "a job ends once"
            assert watcher.frames == [], "nothing is pushed before the store has saved the result"
            await asyncio.wait_for(watcher.arrived.wait(), 10)
            saved_job = await store.get(job.id)
            assert saved_job is not None and saved_job.state is JobState.SUCCEEDED
            assert watcher.frames == [result_frame(job)]

    run(scenario())


def test_sqlite_purges_results_older_than_the_ttl(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with opened(lambda: SqliteStore(tmp_path / "jobs.sqlite3")) as store:
            old, new, running = (Job("echo", {}, None, owner="a") for _ in range(3))
            for job in (old, new, running):
                await saved(store.put, job)
            for job, age in ((old, 49 * 3600), (new, 60)):
                job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time() - age, {}
                await saved(store.finish, job)
            assert await store.purge(time.time() - 48 * 3600) == 1
            assert await store.get(old.id) is None
            assert await store.get(new.id) is not None and await store.get(running.id) is not None

    run(scenario())


def test_redis_results_expire_after_the_ttl_and_finishes_are_announced(redis_url: str) -> None:
    async def scenario() -> None:
        announced: list[str] = []
        heard = asyncio.Event()
        async with opened(lambda: RedisStore(redis_url, ttl=7200)) as writer, \
                opened(lambda: RedisStore(redis_url, ttl=7200)) as listener:
            def on_finished(job_id: str) -> None:
                announced.append(job_id)
                heard.set()

            listener.listen(on_finished, lambda job_id: None)
            await asyncio.wait_for(listener.subscribed, 10)  # type: ignore[attr-defined]
            job = Job("echo", {}, None, owner=f"w-{uuid.uuid4().hex}")
            await saved(writer.put, job)
            assert isinstance(writer, RedisStore)
            assert await writer.client.ttl(f"ami:job:{job.id}") == -1, "unfinished jobs do not expire"
            job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time(), {"ok": 1}
            await saved(writer.finish, job)
            await asyncio.wait_for(heard.wait(), 10)
            assert announced == [job.id]
            assert isinstance(writer, RedisStore)
            assert 7100 < await writer.client.ttl(f"ami:job:{job.id}") <= 7200

    run(scenario())


def test_results_of_cacheable_kinds_are_kept_for_reuse(make_store: Opener) -> None:
    async def scenario() -> None:
        draw = {"date": "2024-03-26", "numbers": [2, 13, 14, 26, 29], "stars": [5, 6]}
        async with opened(make_store) as store:
            assert await store.cached("euro.results", {"date": "2024-03-26"}) is None
            store.remember("euro.results", {"date": "2024-03-26"}, draw)
            marker = Job("echo", {}, None, owner="flush")
            await saved(store.put, marker)  # writes are applied in order: this one comes after
        async with opened(make_store) as store:
            assert await store.cached("euro.results", {"date": "2024-03-26"}) == draw
            assert await store.cached("euro.results", {"date": "2024-03-29"}) is None
            assert await store.cached("audio.length", {"date": "2024-03-26"}) is None

    run(scenario())


def test_redis_fencing_refuses_the_old_owners_writes_once_a_job_is_adopted(redis_url: str) -> None:
    """Server A saved a job and lost its lease; B adopted it (its fencing token grew): A's state and result
    writes are refused and A is told, B's are written, and the finish is announced once."""
    async def scenario() -> None:
        redis.Redis.from_url(redis_url).flushdb()
        announced: list[str] = []
        lost: list[str] = []
        heard = asyncio.Event()

        def on_finished(job_id: str) -> None:
            announced.append(job_id)
            heard.set()

        async with opened(lambda: RedisStore(redis_url, ttl=3600)) as a, \
                opened(lambda: RedisStore(redis_url, ttl=3600)) as b, \
                opened(lambda: RedisStore(redis_url, ttl=3600)) as listener:
            assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
            listener.listen(on_finished, lambda job_id: None)
            await asyncio.wait_for(listener.subscribed, 10)  # type: ignore[attr-defined]
            a.on_lost = lost.append
            job = Job("echo", {"n": 1}, None, owner="a")
            assert await saved(a.put, job)
            [adopted] = await b.adopt("b")  # A holds no lease: its jobs are anyone's
            assert adopted.id == job.id and adopted.fence == 1 and job.fence == 0
            a.start(job)
            job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time(), {"by": "a"}
            assert await saved(a.finish, job), "answered (A is told it lost the job), never written"
            assert lost == [job.id, job.id] and a.fenced == 2
            record = await b.get(job.id)
            assert record is not None and record.state is JobState.QUEUED, "A's writes changed nothing"
            adopted.owner = "b"  # as the adopting server's resume makes it
            adopted.state, adopted.finished_at, adopted.result = JobState.SUCCEEDED, time.time(), {"by": "b"}
            assert await saved(b.finish, adopted) and b.fenced == 0
            record = await b.get(job.id)
            assert record is not None and record.result == {"by": "b"}
            await asyncio.wait_for(heard.wait(), 10)
            assert announced == [job.id], "A announced nothing: its announcement would have come first, in order"
            assert not await b.client.sismember("ami:unfinished:b", job.id)

    run(scenario())
