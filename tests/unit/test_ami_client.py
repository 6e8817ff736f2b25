"""The `ami` client: an unreachable server is a connection failure, and a job is forgotten once its result is
delivered (asked for again, it is watched again). Real uvicorn with the fake pools (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import ami
from server.store import MemoryStore
from tests.helpers import ServerThread, run
from tests.unit.fakes import FakeDispatcher, unit_settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = unit_settings(tmp_path_factory.mktemp("client"), frames_per_s=100_000.0)
    with ServerThread(settings, store=MemoryStore(), make_dispatcher=FakeDispatcher) as running:
        yield running


def test_results_awaited_or_streamed_are_forgotten_once_delivered(server: ServerThread) -> None:
    async def scenario() -> None:
        async with ami.Client(server.ws_url) as client:
            results = await client.submit_many(("echo", {"n": n}) for n in range(300))
            assert [result.result["n"] for result in results if isinstance(result, ami.Result)] == list(range(300))
            assert client.jobs_held == 0, "every result was delivered: nothing is kept"

            stream = client.results()
            first = asyncio.ensure_future(anext(stream))  # listening from the send's first wait, before any result
            jobs = [await client.send("echo", {"s": n}) for n in range(50)]
            seen = [(await first).job] + [(await anext(stream)).job for _ in range(49)]
            assert sorted(seen) == sorted(jobs) and client.jobs_held == 0
            await stream.aclose()

            again = await client.result(jobs[7])  # forgotten, so watched again: the server kept it
            assert again.result == {"s": 7} and client.jobs_held == 0

    run(scenario())


def test_a_result_nobody_has_claimed_is_kept_until_it_is(server: ServerThread) -> None:
    async def scenario() -> None:
        async with ami.Client(server.ws_url) as client:
            job = await client.send("echo", {"kept": True})
            await client.status(job)  # answered after the result was pushed: the result is here by now
            assert client.jobs_held == 1
            assert (await client.result(job)).result == {"kept": True}
            assert client.jobs_held == 0

    run(scenario())


def test_an_unreachable_server_is_a_connection_failure() -> None:
    async def scenario() -> None:
        with pytest.raises(ami.ConnectionFailed):
            await ami.Client("ws://127.0.0.1:9/ws", open_timeout=5).connect()

    run(scenario())
