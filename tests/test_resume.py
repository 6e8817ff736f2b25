"""No accepted job is lost: reconnects, restarts, and servers sharing one Redis store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from server.jobs import Job, JobState
from server.store import SqliteStore
from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for

ECHO_ONLY = (("audio.length", 0), ("euro.results", 0), ("echo", 1))


def test_results_are_kept_for_a_client_that_reconnects(server: ServerThread) -> None:
    async def scenario() -> None:
        first = await Client.connect(server.ws_url)
        slow = await first.submit("echo", {"n": "slow", "delay_ms": 1500}, ref="slow")
        quick = await first.submit("echo", {"n": "quick"}, ref="quick")
        await first.result(quick)
        await first.close()  # gone before the slow job finishes

        again = await Client.connect(server.ws_url)
        await again.send({"op": "watch", "jobs": [quick, slow]})
        done = await again.recv()
        assert done["job"] == quick and done["result"] == {"n": "quick"}, "finished jobs come at once"
        later = await again.recv(timeout=30)
        assert later["job"] == slow and later["status"] == "succeeded" and later["result"]["n"] == "slow"
        await again.close()

        # A job that finishes while nobody is connected is still there afterwards.
        third = await Client.connect(server.ws_url)
        lonely = await third.submit("echo", {"n": "lonely", "delay_ms": 300})
        await third.close()
        fourth = await Client.connect(server.ws_url)
        await fourth.send({"op": "watch", "jobs": [lonely]})
        frame = await fourth.recv(timeout=30)
        assert frame["job"] == lonely and frame["result"]["n"] == "lonely"
        await fourth.close()

    run(scenario())


async def _seed(path: Path, jobs: list[Job]) -> None:
    store = SqliteStore(path)
    await store.open()
    for job in jobs:
        assert await store.put(job)
    await store.close()


def test_a_restart_resubmits_unfinished_jobs_and_gives_up_on_hopeless_ones(
        ray_session: None, http: FixtureHTTP, tmp_path: Path) -> None:
    owner = "restarted-server"
    cut_off = Job("echo", {"n": 1}, "c", owner=owner, state=JobState.RUNNING)
    hopeless = Job("echo", {"n": 2}, "h", owner=owner, restarts=3)
    finished = Job("echo", {"n": 3}, "f", owner=owner, state=JobState.SUCCEEDED, result={"n": 3})
    finished.finished_at = time.time()
    someone_elses = Job("echo", {"n": 4}, None, owner="another-server")
    run(_seed(tmp_path / "jobs.sqlite3", [cut_off, hopeless, finished, someone_elses]))

    settings = settings_for(http, tmp_path, pools=ECHO_ONLY, server_id=owner)
    with ServerThread(settings) as running:
        async def scenario() -> dict[str, dict[str, Any]]:
            async with await Client.connect(running.ws_url) as client:
                await client.send({"op": "watch", "jobs": [cut_off.id, hopeless.id, finished.id, someone_elses.id]})
                frames = [await client.recv() for _ in range(4)]
                return {frame["job"]: frame for frame in frames}

        frames = run(scenario())
    assert frames[cut_off.id]["status"] == "succeeded" and frames[cut_off.id]["result"] == {"n": 1}
    assert frames[hopeless.id]["status"] == "failed"
    assert frames[hopeless.id]["error"]["code"] == "worker_lost"
    assert frames[finished.id]["result"] == {"n": 3}
    # With SQLite, whoever opens the data dir resumes all of it, whatever server id or port saved a job.
    assert frames[someone_elses.id]["status"] == "succeeded" and frames[someone_elses.id]["result"] == {"n": 4}


@pytest.fixture
def two_servers(ray_session: None, http: FixtureHTTP, redis_url: str, tmp_path: Path) -> Iterator[
        tuple[ServerThread, ServerThread]]:
    redis.Redis.from_url(redis_url).flushdb()
    first = settings_for(http, tmp_path / "a", pools=ECHO_ONLY, store=redis_url, server_id="a")
    second = settings_for(http, tmp_path / "b", pools=ECHO_ONLY, store=redis_url, server_id="b")
    with ServerThread(first) as a, ServerThread(second) as b:
        yield a, b


def test_a_job_submitted_on_one_server_is_watched_and_cancelled_on_another(
        two_servers: tuple[ServerThread, ServerThread]) -> None:
    a, b = two_servers

    async def scenario() -> None:
        async with await Client.connect(a.ws_url) as on_a, await Client.connect(b.ws_url) as on_b:
            slow = await on_a.submit("echo", {"n": "slow", "delay_ms": 1000})
            doomed = await on_a.submit("echo", {"n": "doomed", "delay_ms": 60_000})
            await on_b.send({"op": "watch", "jobs": [slow], "ref": "w"})
            pushed = await on_b.result(slow, timeout=30)
            assert pushed["status"] == "succeeded" and pushed["result"]["n"] == "slow" and pushed["ref"] == "w"
            assert (await on_a.result(slow))["status"] == "succeeded"
            await on_b.send({"op": "status", "job": doomed})  # started a second ago, on the other server
            assert (await on_b.recv_until(lambda f: f["type"] == "status"))["state"] == "running"

            await on_b.send({"op": "cancel", "job": doomed})
            assert (await on_b.result(doomed, timeout=30))["status"] == "cancelled"
            assert (await on_a.result(doomed, timeout=30))["status"] == "cancelled"

            rest = await asyncio.to_thread(requests.get, f"{b.url}/jobs/{slow}", timeout=10)
            assert rest.json()["state"] == "succeeded" and rest.json()["result"]["n"] == "slow"

    run(scenario())


def test_a_published_draw_is_fetched_once_even_across_restarts(ray_session: None, http: FixtureHTTP,
                                                                tmp_path: Path) -> None:
    from tests.euro_pages import current_page

    hits: list[str] = []
    page = current_page("Friday 5th April 2024", [4, 8, 15, 16, 23], [1, 2])
    failing = [True]

    def served(handler: Any) -> None:
        hits.append(handler.path)
        status, body = (503, b"busy") if failing[0] and handler.path.endswith("02-04-2024") else (200, page)
        if status == 200 and handler.path.endswith("02-04-2024"):
            body = current_page("Tuesday 2nd April 2024", [1, 2, 3, 4, 5], [6, 7])
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    prefix = f"/cached-{tmp_path.name}/"
    http.add(prefix + "05-04-2024", served)
    http.add(prefix + "02-04-2024", served)
    settings = settings_for(http, tmp_path, pools=(("audio.length", 0), ("euro.results", 1)), enable_echo=False,
                             euro_url=http.url(prefix), server_id="cache")

    async def ask(url: str, date: str) -> dict[str, Any]:
        async with await Client.connect(url) as client:
            return await client.result(await client.submit("euro.results", {"date": date}))

    with ServerThread(settings) as first:
        assert run(ask(first.ws_url, "2024-04-05"))["result"]["numbers"] == [4, 8, 15, 16, 23]
        assert run(ask(first.ws_url, "2024-04-02"))["error"]["code"] == "fetch_failed"
    failing[0] = False
    with ServerThread(settings) as second:  # new actors, empty caches but the store's
        again = run(ask(second.ws_url, "05-04-2024"))
        assert again["status"] == "succeeded" and again["result"]["stars"] == [1, 2]
        assert run(ask(second.ws_url, "2024-04-02"))["result"]["numbers"] == [1, 2, 3, 4, 5], "failures are not kept"
    assert [path.rsplit("/", 1)[1] for path in hits] == ["05-04-2024", "02-04-2024", "02-04-2024"]


def test_a_stopped_servers_unfinished_jobs_are_adopted_and_each_result_comes_once(
        ray_session: None, http: FixtureHTTP, redis_url: str, tmp_path: Path) -> None:
    import threading

    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    a = ServerThread(settings_for(http, tmp_path / "a", pools=ECHO_ONLY, store=redis_url, server_id="a",
                                  lease_ttl=1.0))
    b_settings = settings_for(http, tmp_path / "b", pools=ECHO_ONLY, store=redis_url, server_id="b", lease_ttl=1.0)
    with ServerThread(b_settings) as b:
        with a:
            async def submit() -> list[str]:
                async with await Client.connect(a.ws_url) as client:
                    return [await client.submit("echo", {"n": n, "delay_ms": 1500}) for n in range(5)]

            jobs = run(submit())
            watching = threading.Event()
            seen: list[dict[str, Any]] = []

            async def watch_on_b() -> None:
                async with await Client.connect(b.ws_url) as client:
                    await client.send({"op": "watch", "jobs": jobs})
                    await client.send({"op": "ping", "ref": "watching"})
                    await client.recv_until(lambda frame: frame.get("ref") == "watching")
                    watching.set()
                    while len(seen) < len(jobs):
                        seen.append(await client.recv(timeout=60))
                    await client.send({"op": "ping", "ref": "after"})
                    assert (await client.recv()) == {"type": "pong", "ref": "after"}, "no result came twice"

            watcher = threading.Thread(target=run, args=(watch_on_b(),), kwargs={"timeout": 90})
            watcher.start()
            assert watching.wait(30)
        # A has stopped: its actors are gone and its jobs unfinished; B adopts and runs them.
        watcher.join(90)
        assert not watcher.is_alive()
    assert sorted(frame["job"] for frame in seen) == sorted(jobs)
    assert all(frame["status"] == "succeeded" for frame in seen)
    assert sorted(frame["result"]["n"] for frame in seen) == list(range(5))
    assert store.scard("ami:unfinished:a") == 0 and store.scard("ami:unfinished:b") == 0
