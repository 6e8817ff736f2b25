"""Limits from the settings: how long a job may run, how many unfinished jobs one socket may hold."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for


@pytest.fixture(scope="module")
def limited(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("limits"), job_timeout=1.0, max_jobs_per_connection=3,
                             pools=(("audio.length", 0), ("euro.results", 0), ("echo", 1)))
    with ServerThread(settings) as running:
        yield running


def test_a_job_that_runs_too_long_fails_with_timeout_and_the_actor_serves_on(
        limited: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with await Client.connect(limited.ws_url) as client:
            slow = await client.submit("echo", {"delay_ms": 30_000})
            late = await client.result(slow, timeout=30)
            quick = await client.submit("echo", {"after": "timeout"})
            return late, await client.result(quick)

    with caplog.at_level(logging.WARNING):
        late, quick = run(scenario())
        gc.collect()  # asyncio reports an unretrieved exception (the cancelled call's) when its future is collected
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    assert late["status"] == "failed" and late["error"]["code"] == "timeout"
    assert "longer than 1 s" in late["error"]["message"]
    assert quick["result"] == {"after": "timeout"}


def test_one_socket_may_hold_only_so_many_unfinished_jobs(limited: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(limited.ws_url) as client:
            jobs = [await client.submit("echo", {"n": n, "delay_ms": 500}) for n in range(3)]
            await client.send({"op": "submit", "kind": "echo", "args": {}, "ref": "fourth"})
            busy = await client.recv_until(lambda frame: frame.get("ref") == "fourth")
            assert (busy["type"], busy["code"]) == ("error", "busy")
            for job in jobs:
                assert (await client.result(job))["status"] == "succeeded"
            assert await client.submit("echo", {"n": "again"}, ref="again")  # room again once they finished

    run(scenario())
