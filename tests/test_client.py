"""The Python client and the `ami` command against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ami
from tests.audio_files import encode
from tests.euro_pages import current_page
from tests.helpers import Fixture, FixtureHTTP, ServerThread, run, settings_for, wait_until

AMI = Path(sys.executable).parent / "ami"



def test_submit_returns_the_result_and_refusals_are_typed(server: ServerThread) -> None:
    async def scenario() -> None:
        async with ami.Client(server.ws_url) as client:
            result = await client.submit("echo", {"hello": "client"})
            assert (result.ok, result.status, result.result) == (True, "succeeded", {"hello": "client"})
            with pytest.raises(ami.Refused) as refused:
                await client.submit("no.such.kind", {})
            assert refused.value.code == "unknown_kind"
            many = await client.submit_many([("echo", {"n": n}) for n in range(20)] + [("euro.results", {})])
            assert [r.result["n"] for r in many[:20] if isinstance(r, ami.Result)] == list(range(20))
            assert isinstance(many[20], ami.Refused) and many[20].code == "invalid_args"
            assert await client.status(result.job) == "succeeded"

    run(scenario())


def test_results_stream_and_a_dropped_connection_is_resumed_with_each_result_once(server: ServerThread) -> None:
    services = server.app.state.services

    async def drop_every_socket() -> None:
        for session in list(services.sessions):
            await session.websocket.close(1012, "restarting")

    async def scenario() -> list[ami.Result]:
        async with ami.Client(server.ws_url, max_backoff=0.5) as client:
            jobs = [await client.send("echo", {"n": n, "delay_ms": 300}) for n in range(5)]
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(drop_every_socket(), server.server_loop()))
            seen: list[ami.Result] = []
            async for result in client.results():
                seen.append(result)
                if len(seen) == len(jobs):
                    break
            assert sorted(r.job for r in seen) == sorted(jobs)
            extra = await client.submit("echo", {"after": "the drop"})  # a new job on the new connection
            assert extra.ok
            return seen

    seen = run(scenario())
    assert sorted(r.result["n"] for r in seen) == list(range(5)) and all(r.ok for r in seen)


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert AMI.exists(), "the ami console script is installed with the project"
    return subprocess.run([str(AMI), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_ami_command(server: ServerThread, http: FixtureHTTP) -> None:
    http.add("/euro/26-03-2024", Fixture(body=current_page("Tuesday 26th March 2024", [2, 13, 14, 26, 29], [5, 6])))
    wav = http.add("/cli/one.wav", Fixture(body=encode(8000, 8000, "WAV", "PCM_16")))
    url = ("--url", server.ws_url)

    euro = cli(*url, "euro", "2024-03-26")
    assert euro.returncode == 0, euro.stderr
    [line] = json_lines(euro.stdout)
    assert (line["type"], line["status"], line["result"]["stars"]) == ("result", "succeeded", [5, 6])

    from_env = cli("audio", wav, env={"AMI_URL": server.ws_url})
    assert from_env.returncode == 0 and json_lines(from_env.stdout)[0]["result"]["duration"] == 1.0

    failed = cli(*url, "audio", http.url("/cli/missing.wav"))
    assert failed.returncode == 1 and json_lines(failed.stdout)[0]["error"]["code"] == "fetch_failed"
    refused = cli(*url, "submit", "echo", "[1]")
    assert refused.returncode == 2 and "JSON object" in refused.stderr
    invalid = cli(*url, "euro", "2024-01-03")
    assert invalid.returncode == 1 and json_lines(invalid.stdout)[0]["code"] == "invalid_args"

    piped = cli(*url, "-", stdin=f"euro 2024-03-26\naudio {wav}\nsubmit echo '{{\"x\": 1}}'\n")
    assert piped.returncode == 0, piped.stderr
    results = json_lines(piped.stdout)
    assert sorted(r["kind"] for r in results) == ["audio.length", "echo", "euro.results"]
    job = next(r["job"] for r in results if r["kind"] == "echo")
    assert json_lines(cli(*url, "status", job).stdout) == [{"type": "status", "job": job, "kind": "echo",
                                                            "state": "succeeded"}]
    status_of_none = cli(*url, "status", "0" * 32)
    assert status_of_none.returncode == 1 and json_lines(status_of_none.stdout)[0]["code"] == "not_found"
    watched = cli(*url, "watch", job)
    assert watched.returncode == 0 and json_lines(watched.stdout)[0]["result"] == {"x": 1}
    never = "0" * 32
    unknown = cli(*url, "--timeout", "60", "watch", job, never)  # answered at once: never a hang
    assert unknown.returncode == 1, unknown.stderr
    lines = json_lines(unknown.stdout)
    assert lines[0]["result"] == {"x": 1} and (lines[1]["code"], lines[1]["job"]) == ("not_found", never)

    assert cli(*url, "frobnicate").returncode == 2
    assert cli("--url", "ws://127.0.0.1:9/ws", "euro", "2024-03-26").returncode == 2
    slow = cli(*url, "--timeout", "0.5", "submit", "echo", '{"delay_ms": 3000}')
    assert slow.returncode == 2 and "no answer within 0.5 s" in slow.stderr
    echo = server.app.state.services.dispatcher.pools["echo"]
    idle = wait_until(lambda: sum(slot.inflight for slot in echo.slots) == 0, 30)
    assert idle, "the shared server is idle again for the next tests"
    assert "euro DATE" in cli("--help").stdout


def test_bursts_over_the_frame_budget_are_paced_by_the_client_never_failed(
        ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A script's burst (`ami -` with 1,000 lines, `submit_many` of 500) meets a server whose budget (50 frames/s,
    a burst of 250) it overruns: the refused frames are sent again after retry_after_ms, and every job runs."""
    settings = settings_for(http, tmp_path_factory.mktemp("paced"), frames_per_s=50.0, pools=(("echo", 1),))
    with ServerThread(settings) as paced:
        registry = paced.app.state.services.metrics.registry

        def refused() -> float:
            return registry.get_sample_value("ami_refusals_total", {"reason": "rate_limited"}) or 0.0

        async def scenario() -> list[ami.Result | ami.Refused]:
            async with ami.Client(paced.ws_url) as client:
                return await client.submit_many([("echo", {"n": n}) for n in range(500)])

        many = run(scenario())
        assert [r.result["n"] for r in many if isinstance(r, ami.Result) and r.ok] == list(range(500))
        after_many = refused()
        assert after_many > 0, "the burst went over the budget, so some frames were refused and sent again"

        piped = cli("--url", paced.ws_url, "-", stdin="".join(f"submit echo '{{\"n\": {n}}}'\n" for n in range(1000)))
        assert piped.returncode == 0, piped.stderr[-2000:]
        assert sorted(r["result"]["n"] for r in json_lines(piped.stdout)) == list(range(1000))
        assert refused() > after_many
        assert paced.app.state.services.metrics.registry.get_sample_value(
            "ami_refusals_total", {"reason": "flooding"}) is None, "a client that waits as told is never closed"
