"""Micro-batching on real Ray: queued jobs of a batching kind go to an actor several at a time while it is busy,
each result comes back (and is pushed) on its own, one job's cancel or failure is its own, and a lost actor re-runs
only the jobs that had no result yet."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import requests

from server.jobs import Job
from tests.euro_pages import current_page
from tests.helpers import Client, Fixture, FixtureHTTP, ServerThread, run, settings_for


@pytest.fixture(scope="module")
def batching(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("batching"), pools=(("echo", 1), ("euro.results", 1)))
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


def batch_sizes(server: ServerThread, kind: str) -> tuple[float, float]:
    """(calls, calls that carried one job) of `kind`, from /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    count = ones = 0.0
    for line in text.splitlines():
        if line.startswith(f'ami_batch_size_count{{kind="{kind}"}}'):
            count = float(line.split()[-1])
        if line.startswith(f'ami_batch_size_bucket{{kind="{kind}",le="1.0"}}'):
            ones = float(line.split()[-1])
    return count, ones


def test_a_burst_goes_out_in_batches_and_a_lone_job_at_once(batching: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(batching.ws_url) as client:
            before, ones_before = batch_sizes(batching, "echo")
            lone = await client.submit("echo", {"lone": True}, ref="lone")
            assert (await client.result(lone))["result"] == {"lone": True}
            calls, ones = batch_sizes(batching, "echo")
            assert (calls - before, ones - ones_before) == (1, 1), "an idle pool sends a lone job at once, alone"
            await client.send({"op": "submit", "kind": "echo", "args": {"delay_ms": 300}, "ref": "busy"})
            for n in range(200):
                await client.send({"op": "submit", "kind": "echo", "args": {"n": n}, "ref": f"b{n}"})
            results: dict[str, dict[str, Any]] = {}
            while len(results) < 201:
                frame = await client.recv()
                if frame["type"] == "result":
                    results[frame["ref"]] = frame
            assert all(results[f"b{n}"]["result"] == {"n": n} for n in range(200))
            after, ones_after = batch_sizes(batching, "echo")
            assert after - calls < 201 and after - calls - (ones_after - ones) >= 1, "some calls carried many jobs"

    run(scenario())


def test_one_cancelled_job_of_a_batch_is_the_only_one_cancelled(batching: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(batching.ws_url) as client:
            await client.send({"op": "submit", "kind": "echo", "args": {"delay_ms": 200}, "ref": "busy"})
            for n in range(5):  # gathered while the actor is busy: one call
                await client.send({"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": 1500}, "ref": f"c{n}"})
            jobs: dict[str, str] = {}
            while len(jobs) < 6:
                frame = await client.recv_until(lambda f: f["type"] == "accepted")
                jobs[frame["ref"]] = frame["job"]
            await client.send({"op": "cancel", "job": jobs["c2"], "ref": "cancel"})
            results: dict[str, dict[str, Any]] = {}
            while len(results) < 6:
                frame = await client.recv_until(lambda f: f["type"] == "result")
                results[frame["job"]] = frame
            assert results[jobs["c2"]]["status"] == "cancelled"
            assert all(results[jobs[f"c{n}"]]["status"] == "succeeded" for n in (0, 1, 3, 4))

    run(scenario())


def test_a_job_that_fails_in_a_batch_fails_alone(batching: ServerThread, http: FixtureHTTP) -> None:
    days = [dt.date(2023, 1, 3) + dt.timedelta(days=7 * n) for n in range(6)]  # Tuesdays
    for day in days:
        heading = f"{day:%A} {day.day}th {day:%B %Y}"
        body = current_page(heading, [11, 22, 33, 44, day.day], [1, 2])
        http.add(f"/euro/{day:%d-%m-%Y}", Fixture(body=body) if day != days[3] else Fixture(status=500, body=b"oops"))

    async def scenario() -> dict[str, dict[str, Any]]:
        async with await Client.connect(batching.ws_url) as client:
            for day in days:
                await client.send({"op": "submit", "kind": "euro.results", "args": {"date": day.isoformat()},
                                   "ref": day.isoformat()})
            results: dict[str, dict[str, Any]] = {}
            while len(results) < len(days):
                frame = await client.recv_until(lambda f: f["type"] == "result", 60)
                results[frame["ref"]] = frame
            return results

    results = run(scenario())
    assert results[days[3].isoformat()]["status"] == "failed"
    assert results[days[3].isoformat()]["error"]["code"] == "fetch_failed"
    for day in days[:3] + days[4:]:
        assert results[day.isoformat()]["status"] == "succeeded", results[day.isoformat()]
        assert day.day in results[day.isoformat()]["result"]["numbers"]


def test_an_actor_lost_mid_batch_reruns_only_the_jobs_without_a_result(batching: ServerThread,
                                                                        tmp_path: Path) -> None:
    table = batching.app.state.services.table
    held: dict[str, Job] = {}

    async def scenario() -> dict[str, dict[str, Any]]:
        async with await Client.connect(batching.ws_url) as client:
            await client.send({"op": "submit", "kind": "echo", "args": {"delay_ms": 300}, "ref": "busy"})
            quick = [f"q{n}" for n in range(3)]
            slow = [f"s{n}" for n in range(3)]
            for ref in quick:  # one call: the quick ones come back at once, the slow ones are cut off
                await client.send({"op": "submit", "kind": "echo", "args": {"ref": ref}, "ref": ref})
            for ref in slow:
                await client.send({"op": "submit", "kind": "echo", "args": {"ref": ref, "delay_ms": 3000}, "ref": ref})
            ids: dict[str, str] = {}
            while len(ids) < 7:
                frame = await client.recv_until(lambda f: f["type"] == "accepted")
                ids[frame["ref"]] = frame["job"]
                job = table.get(frame["job"])
                if job is not None:
                    held[frame["ref"]] = job
            results: dict[str, dict[str, Any]] = {}
            while not all(ref in results for ref in quick):
                frame = await client.recv_until(lambda f: f["type"] == "result")
                results[frame["ref"]] = frame
            slot = held["s0"].running.slot
            assert held["s0"].running.batched and all(held[ref].running.slot is slot for ref in slow)
            await asyncio.to_thread(ray.kill, slot.handle, no_restart=False)  # mid-batch; Ray starts it again
            while len(results) < 7:
                frame = await client.recv_until(lambda f: f["type"] == "result", 60)
                assert frame["ref"] not in results, "one result per job"
                results[frame["ref"]] = frame
            return results

    results = run(scenario(), timeout=120)
    assert all(results[ref]["status"] == "succeeded" for ref in results)
    assert [held[f"q{n}"].attempts for n in range(3)] == [1, 1, 1], "jobs with a result never run again"
    assert [held[f"s{n}"].attempts for n in range(3)] == [2, 2, 2], "the cut-off jobs ran again"
