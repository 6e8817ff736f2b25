"""The store contract against a real Redis server, and what only the shared backend does: expiry, announcements,
cancels between servers, leases and fencing."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from server.jobs import Job, JobState
from server.store import RedisStore
from tests.helpers import run
from tests.store_contract import Opener, StoreContract, opened


class TestRedisStore(StoreContract):
    shared = True
    expires_itself = True

    @pytest.fixture
    def make_store(self, redis_url: str) -> Opener:
        redis.Redis.from_url(redis_url).flushdb()
        return lambda: RedisStore(redis_url, ttl=3600)


def test_redis_results_expire_after_the_ttl_and_finishes_are_announced(redis_url: str) -> None:
    async def scenario() -> None:
        announced: list[str] = []
        heard = asyncio.Event()
        async with opened(lambda: RedisStore(redis_url, ttl=7200)) as writer, \
                opened(lambda: RedisStore(redis_url, ttl=7200)) as listener:
            def on_finished(job_id: str) -> None:
                announced.append(job_id)
                heard.set()

            await listener.listen(on_finished, lambda job_id: None, lambda job_id: None)
            job = Job("echo", {}, None, owner=f"w-{uuid.uuid4().hex}")
            await writer.put(job)
            assert isinstance(writer, RedisStore)
            assert await writer.client.ttl(f"ami:job:{job.id}") == -1, "unfinished jobs do not expire"
            job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time(), {"ok": 1}
            await writer.finish(job)
            await asyncio.wait_for(heard.wait(), 10)
            assert announced == [job.id]
            assert isinstance(writer, RedisStore)
            assert 7100 < await writer.client.ttl(f"ami:job:{job.id}") <= 7200

    run(scenario())


def test_redis_a_result_supersedes_writes_of_its_job_that_have_not_gone_out(redis_url: str) -> None:
    """A job that starts and finishes before its `running` write went out costs one write to Redis, not two; one
    that finishes before its first save went out costs the result's write alone, which answers the first save."""
    async def calls(store: RedisStore, command: str = "eval") -> int:
        return int((await store.client.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0))

    async def evals(store: RedisStore) -> int:
        return await calls(store)

    async def scenario() -> None:
        redis.Redis.from_url(redis_url).flushdb()
        async with opened(lambda: RedisStore(redis_url, ttl=3600)) as store:
            assert isinstance(store, RedisStore)
            quick, slow = Job("echo", {"n": 1}, None, owner="a"), Job("echo", {"n": 2}, None, owner="a")
            assert await store.put(quick) and await store.put(slow)
            before = await evals(store)
            quick.state = slow.state = JobState.RUNNING
            store.start(quick)
            quick.state, quick.finished_at, quick.result = JobState.SUCCEEDED, time.time(), {"n": 1}
            assert await store.finish(quick)
            assert await evals(store) - before == 1, "the finish alone"
            store.start(slow)
            assert await store.put(Job("echo", {"n": 3}, None, owner="a"))  # the start has gone out
            record = await store.get(slow.id)
            assert record is not None and record.state is JobState.RUNNING
            slow.state, slow.finished_at, slow.result = JobState.SUCCEEDED, time.time(), {"n": 2}
            assert await store.finish(slow)
            assert await evals(store) - before == 3, "a start that went out, then its finish"
            for job, result in ((quick, {"n": 1}), (slow, {"n": 2})):
                record = await store.get(job.id)
                assert record is not None and record.state is JobState.SUCCEEDED and record.result == result

            burst = Job("echo", {"n": 4}, None, owner="a")
            sets, adds, before = await calls(store, "set"), await calls(store, "sadd"), await evals(store)
            first = store.put(burst)
            burst.state = JobState.RUNNING
            store.start(burst)
            burst.state, burst.finished_at, burst.result = JobState.SUCCEEDED, time.time(), {"n": 4}
            assert await store.finish(burst) and first.done() and first.result(), "the first save answered too"
            assert (await calls(store, "set"), await calls(store, "sadd"), await evals(store)) == (
                sets + 1, adds, before + 1), "the result's write alone (Redis counts the SET its script calls)"
            record = await store.get(burst.id)
            assert record is not None and record.state is JobState.SUCCEEDED and record.result == {"n": 4}
            assert not await store.client.sismember("ami:unfinished:a", burst.id)
            assert burst.id not in [job.id for job in await store.unfinished("a")], "nothing to resume"

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
            await listener.listen(on_finished, lambda job_id: None, lambda job_id: None)
            await a.listen(lambda job_id: None, lambda job_id: None, lost.append)
            job = Job("echo", {"n": 1}, None, owner="a")
            assert await a.put(job)
            [adopted] = await b.adopt("b")  # A holds no lease: its jobs are anyone's
            assert adopted.id == job.id and adopted.fence == 1 and job.fence == 0
            a.start(job)
            assert await a.put(Job("echo", {"n": 2}, None, owner="a")), "queued after the start: it went out first"
            job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time(), {"by": "a"}
            assert await a.finish(job), "answered (A is told it lost the job), never written"
            assert lost == [job.id, job.id] and a.fenced == 2
            record = await b.get(job.id)
            assert record is not None and record.state is JobState.QUEUED, "A's writes changed nothing"
            adopted.owner = "b"  # as the adopting server's resume makes it
            adopted.state, adopted.finished_at, adopted.result = JobState.SUCCEEDED, time.time(), {"by": "b"}
            assert await b.finish(adopted) and b.fenced == 0
            record = await b.get(job.id)
            assert record is not None and record.result == {"by": "b"}
            await asyncio.wait_for(heard.wait(), 10)
            assert announced == [job.id], "A announced nothing: its announcement would have come first, in order"
            assert not await b.client.sismember("ami:unfinished:b", job.id)

    run(scenario())


def test_a_cancel_asked_on_one_server_is_heard_by_the_others(redis_url: str) -> None:
    async def scenario() -> None:
        heard: asyncio.Queue[str] = asyncio.Queue()
        async with opened(lambda: RedisStore(redis_url, ttl=3600)) as asking, \
                opened(lambda: RedisStore(redis_url, ttl=3600)) as running:
            await running.listen(lambda job_id: None, heard.put_nowait, lambda job_id: None)
            asking.request_cancel("job-1")
            assert await asyncio.wait_for(heard.get(), 10) == "job-1"

    run(scenario())


def test_a_job_that_finishes_before_its_first_save_is_answered_is_never_taken_for_lost(redis_url: str) -> None:
    """A job runs while its first save is on its way: when its finish is queued before that save answers, the
    store must not hold it as this server's unfinished job, or the next lease renewal would call it adopted by
    another server and drop it (its watchers would wait forever)."""
    async def scenario() -> None:
        redis.Redis.from_url(redis_url).flushdb()
        lost: list[str] = []
        async with opened(lambda: RedisStore(redis_url, ttl=3600)) as store:
            await store.listen(lambda job_id: None, lambda job_id: None, lost.append)
            job = Job("echo", {"n": 1}, None, owner="a")
            put = store.put(job)  # not awaited: the run overlaps the save
            job.state, job.finished_at, job.result = JobState.SUCCEEDED, time.time(), {"n": 1}
            finish = store.finish(job)
            assert await put and await finish
            await store._drop_lost("a")  # what each lease renewal does
            assert lost == [] and await store.unfinished("a") == []

    run(scenario())
