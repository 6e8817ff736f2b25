"""The whole product in one process: real uvicorn, real Ray actors, real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
import ray
import requests

from actors import all_kinds
from actors.audio import PREFIX_BYTES
from tests.audio_files import encode
from tests.euro_pages import current_page
from tests.helpers import Client, Fixture, FixtureHTTP, ServerThread, run, wait_until


def test_slow_job_does_not_delay_fast_ones_and_results_come_out_of_order(server: ServerThread) -> None:
    async def scenario() -> list[str]:
        async with await Client.connect(server.ws_url) as client:
            await client.send({"op": "submit", "kind": "echo", "args": {"n": "slow", "delay_ms": 1500}, "ref": "slow"})
            for n in range(3):
                await client.send({"op": "submit", "kind": "echo", "args": {"n": n}, "ref": f"fast{n}"})
            order: list[str] = []
            while len(order) < 4:
                frame = await client.recv()
                if frame["type"] == "result":
                    assert frame["status"] == "succeeded"
                    order.append(frame["ref"])
            return order

    order = run(scenario())
    assert order[-1] == "slow"
    assert sorted(order[:3]) == ["fast0", "fast1", "fast2"]


def test_many_jobs_on_one_socket_each_get_exactly_one_result(server: ServerThread) -> None:
    count = 300

    async def scenario() -> dict[str, dict[str, Any]]:
        async with await Client.connect(server.ws_url) as client:
            for n in range(count):
                await client.send({"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": n % 7}, "ref": str(n)})
            accepted: set[str] = set()
            results: dict[str, dict[str, Any]] = {}
            while len(results) < count or len(accepted) < count:
                frame = await client.recv()
                if frame["type"] == "accepted":
                    accepted.add(frame["job"])
                else:
                    assert frame["type"] == "result"
                    assert frame["job"] in accepted, "a job's result never comes before its accepted"
                    assert frame["job"] not in results, "a second result for one job"
                    results[frame["job"]] = frame
            await client.send({"op": "ping", "ref": "end"})
            assert await client.recv() == {"type": "pong", "ref": "end"}, "no extra frames after the results"
            assert accepted == set(results)
            return results

    results = run(scenario())
    assert sorted(int(f["ref"]) for f in results.values()) == list(range(count))
    for frame in results.values():
        assert frame["result"]["n"] == int(frame["ref"])
        assert frame["kind"] == "echo" and frame["elapsed_ms"] >= 0


def test_many_sockets_each_get_only_their_own_results(server: ServerThread) -> None:
    sockets, per_socket = 12, 15

    async def one(index: int) -> list[int]:
        async with await Client.connect(server.ws_url) as client:
            for n in range(per_socket):
                await client.send({"op": "submit", "kind": "echo", "args": {"owner": index, "n": n}})
            seen: list[int] = []
            while len(seen) < per_socket:
                frame = await client.recv()
                if frame["type"] == "result":
                    assert frame["result"]["owner"] == index
                    seen.append(frame["result"]["n"])
            await client.send({"op": "ping"})
            assert (await client.recv())["type"] == "pong"
            return sorted(seen)

    async def scenario() -> list[list[int]]:
        return await asyncio.gather(*(one(i) for i in range(sockets)))

    assert run(scenario()) == [list(range(per_socket))] * sockets


BAD_FRAMES = [
    ("{oops", "bad_json", None),
    ('[1,2,3]', "bad_request", None),
    ('{"op":"launch","ref":"u"}', "unknown_op", "u"),
    ('{"op":"submit","kind":"video.length","args":{},"ref":"k"}', "unknown_kind", "k"),
    ('{"op":"submit","kind":"audio.length","args":{},"ref":"m"}', "invalid_args", "m"),
    ('{"op":"submit","kind":"audio.length","args":{"url":42},"ref":"w"}', "invalid_args", "w"),
    ('{"op":"submit","kind":"audio.length","args":{"url":"file:///etc/passwd"},"ref":"f"}', "invalid_args", "f"),
    ('{"op":"submit","kind":"euro.results","args":{"date":"2024-01-03"},"ref":"d"}', "invalid_args", "d"),
    ('{"op":"submit","kind":"echo","args":"x","ref":"a"}', "bad_request", "a"),
    ('{"op":"ping","ref":17}', "bad_request", None),
    ('{"op":"status","job":"nope","ref":"s"}', "not_found", "s"),
    ('{"op":"cancel","job":"nope","ref":"c"}', "not_found", "c"),
    ("launch rockets", "unknown_op", None),
]


def test_bad_input_gets_an_error_and_the_socket_keeps_its_jobs(server: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("echo", {"delay_ms": 800}, ref="survivor")
            for text, code, ref in BAD_FRAMES:
                await client.send(text)
                frame = await client.recv()
                assert frame["type"] == "error", (text, frame)
                assert frame["code"] == code, (text, frame)
                assert frame.get("ref") == ref, (text, frame)
                assert frame["message"] and "Traceback" not in frame["message"]
            await client.send(b"\x00\x01binary")
            frame = await client.recv()
            assert (frame["type"], frame["code"]) == ("error", "bad_request")
            await client.send(json.dumps({"op": "submit", "kind": "echo", "args": {"pad": "x" * 70_000}, "ref": "big"}))
            frame = await client.recv()
            assert (frame["type"], frame["code"]) == ("error", "too_large")
            euros = json.dumps({"op": "submit", "kind": "echo", "args": {"pad": "\u20ac" * 22_000}}, ensure_ascii=False)
            assert len(euros) < 64 * 1024 < len(euros.encode()), "few characters, too many bytes"
            await client.send(euros)
            frame = await client.recv()
            assert (frame["type"], frame["code"]) == ("error", "too_large")
            result = await client.result(job)
            assert result["status"] == "succeeded" and result["ref"] == "survivor"
            await client.send("ping\n")
            assert await client.recv() == {"type": "pong"}

    run(scenario())


def test_status_cancel_and_watch(server: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as owner, await Client.connect(server.ws_url) as other:
            slow = await owner.submit("echo", {"delay_ms": 30_000}, ref="slow")
            quick = await owner.submit("echo", {"v": 1}, ref="quick")
            await owner.result(quick)
            await owner.send({"op": "status", "job": slow, "ref": "s1"})
            status = await owner.recv_until(lambda f: f["type"] == "status")
            assert status == {"type": "status", "job": slow, "kind": "echo", "state": "running", "ref": "s1"}
            await owner.send(f"status {quick}")
            status = await owner.recv_until(lambda f: f["type"] == "status")
            assert status["state"] == "succeeded" and "ref" not in status

            await other.send({"op": "watch", "jobs": [quick, "unknown-id", slow], "ref": "w"})
            done = await other.recv()
            assert done["type"] == "result" and done["job"] == quick and done["result"] == {"v": 1}
            assert done["ref"] == "w"
            missing = await other.recv()
            assert missing == {"type": "error", "code": "not_found", "message": missing["message"],
                               "job": "unknown-id", "ref": "w"}

            await owner.send({"op": "cancel", "job": slow, "ref": "c"})
            mine = await owner.result(slow, timeout=10)
            assert mine["status"] == "cancelled" and mine["ref"] == "c"
            theirs = await other.result(slow, timeout=10)
            assert theirs["status"] == "cancelled" and theirs["ref"] == "w"

            await owner.send({"op": "cancel", "job": quick})
            again = await owner.result(quick)
            assert again["status"] == "succeeded", "cancelling a finished job answers its earlier result"
            await owner.send({"op": "status", "job": slow})
            assert (await owner.recv())["state"] == "cancelled"

    run(scenario())


def test_plain_text_commands_for_websocat(server: ServerThread, http: FixtureHTTP) -> None:
    url = http.add("/plain.wav", Fixture(body=encode(16000, 8000, "WAV", "PCM_16")))

    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            await client.send(f"audio {url}\n")
            accepted = await client.recv()
            assert accepted["type"] == "accepted" and accepted["kind"] == "audio.length"
            result = await client.result(accepted["job"])
            assert result["result"]["frames"] == 16000 and result["result"]["duration"] == 2.0
            await client.send(f"watch {accepted['job']}\n")
            assert (await client.recv())["job"] == accepted["job"]
            await client.send("help\n")
            help_frame = await client.recv()
            assert help_frame["type"] == "help" and any("audio <url>" in line for line in help_frame["commands"])
            await client.send("kinds\n")
            assert (await client.recv())["type"] == "kinds"

    run(scenario())


def test_kinds_describes_each_kind_with_a_json_schema(server: ServerThread) -> None:
    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            await client.send({"op": "kinds", "ref": "k"})
            return await client.recv()

    frame = run(scenario())
    assert frame["ref"] == "k"
    kinds = {entry["kind"]: entry for entry in frame["kinds"]}
    assert set(kinds) == set(all_kinds()), "every kind, echo too (enabled here)"
    assert kinds["audio.length"]["schema"]["required"] == ["url"]
    assert kinds["euro.results"]["schema"]["properties"]["date"]["type"] == "string"
    assert all(entry["schema"]["type"] == "object" and entry["description"] for entry in kinds.values())


@pytest.mark.parametrize(
    ("fmt", "subtype", "frames", "rate", "channels"),
    [
        ("WAV", "PCM_16", 265_000, 8000, 1),
        ("WAV", "FLOAT", 44_101, 44_100, 2),
        ("FLAC", "PCM_24", 96_001, 48_000, 2),
        ("OGG", "VORBIS", 22_050, 22_050, 1),
    ],
)
def test_audio_length_is_exact(server: ServerThread, http: FixtureHTTP, fmt: str, subtype: str, frames: int,
                               rate: int, channels: int) -> None:
    body = encode(frames, rate, fmt, subtype, channels)
    url = http.add(f"/audio-{fmt}-{subtype}-{frames}", Fixture(body=body, headers={"Content-Type": "audio/x"}))

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("audio.length", {"url": url}, ref="a")
            return await client.result(job)

    frame = run(scenario())
    assert frame["status"] == "succeeded", frame
    assert frame["result"] == {
        "duration": frames / rate, "frames": frames, "sample_rate": rate, "channels": channels,
        "format": fmt, "method": "header", "bytes": min(len(body), PREFIX_BYTES),
    }


@pytest.mark.parametrize(
    ("fixture", "code", "words"),
    [
        (Fixture(status=503, body=b"down"), "fetch_failed", "HTTP 503"),
        (Fixture(status=200, body=b"<!doctype html><html><body>Sorry</body></html>"), "not_audio", "HTML"),
        (Fixture(status=200, body=b""), "not_audio", "empty"),
        (Fixture(status=200, body=b"\x13\x37" * 5000), "unsupported_format", "format"),
    ],
)
def test_failing_audio_jobs_say_why(server: ServerThread, http: FixtureHTTP, fixture: Fixture, code: str,
                                    words: str) -> None:
    url = http.add(f"/broken-{code}-{fixture.status}-{len(fixture.body)}", fixture)

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("audio.length", {"url": url})
            return await client.result(job)

    frame = run(scenario())
    assert frame["status"] == "failed"
    assert frame["error"]["code"] == code
    assert words in frame["error"]["message"]
    assert "Traceback" not in frame["error"]["message"]


def test_euro_results_from_the_current_markup(server: ServerThread, http: FixtureHTTP) -> None:
    http.add("/euro/26-03-2024", Fixture(body=current_page("Tuesday 26th March 2024", [2, 13, 14, 26, 29], [5, 6])))

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with await Client.connect(server.ws_url) as client:
            ok = await client.submit("euro.results", {"date": "26-03-2024"}, ref="e")
            missing = await client.submit("euro.results", {"date": "2024-03-29"}, ref="m")
            return await client.result(ok), await client.result(missing)

    ok, missing = run(scenario())
    assert ok["status"] == "succeeded" and ok["ref"] == "e"
    assert ok["result"] == {"date": "2024-03-26", "numbers": [2, 13, 14, 26, 29], "stars": [5, 6]}
    assert missing["status"] == "failed" and missing["error"]["code"] == "not_found"


def test_rest_jobs_and_the_old_polling_api(server: ServerThread, http: FixtureHTTP,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="server.rest")
    url = http.add("/rest.wav", Fixture(body=encode(4000, 8000, "WAV", "PCM_16")))
    http.add("/euro/29-03-2024", Fixture(body=current_page("Friday 29th March 2024", [4, 17, 23, 31, 44], [3, 9])))
    created = requests.post(f"{server.url}/jobs", json={"kind": "echo", "args": {"x": 1}}, timeout=10)
    assert created.status_code == 201
    job = created.json()["job"]

    def poll(path: str, done: Any = lambda response: response.status_code != 202) -> requests.Response:
        async def until_done() -> requests.Response:
            while True:
                response = await asyncio.to_thread(requests.get, f"{server.url}{path}", timeout=10)
                if done(response):
                    return response
                await asyncio.sleep(0.05)  # the old client's polling loop, which is what is under test

        return run(until_done())

    body = poll(f"/jobs/{job}", lambda response: response.json()["state"] == "succeeded").json()
    assert body["result"] == {"x": 1} and body["kind"] == "echo"
    assert body["created_at"].endswith("+00:00") and body["finished_at"] >= body["created_at"]

    old = requests.post(f"{server.url}/audio/length", json={"audio_url": url, "callback": True}, timeout=10)
    assert old.status_code == 201
    task = poll(f"/task/{old.json()['id']}")
    assert task.status_code == 200
    assert task.json() == {"id": old.json()["id"], "status": "SUCCESS", "error": None, "result": {"audio_length": 0.5}}
    assert any(old.json()["id"] in record.getMessage() and "callback" in record.getMessage()
               for record in caplog.records), "callback: true logs the result when it arrives"

    euro = requests.post(f"{server.url}/euro/results", json={"draw_date": "29-03-2024"}, timeout=10)
    task = poll(f"/task/{euro.json()['id']}")
    assert task.json()["result"] == [4, 17, 23, 31, 44, 3, 9]

    assert requests.get(f"{server.url}/task/never-issued", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/jobs/never-issued", timeout=10).status_code == 404
    bad = requests.post(f"{server.url}/euro/results", data=b"{nope", timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_json"
    wrong = requests.post(f"{server.url}/euro/results", json={"draw_date": "2024-01-03"}, timeout=10)
    assert wrong.status_code == 422 and "Wednesday" in wrong.json()["error"]["message"]


def test_pools_are_named_by_kind_and_calls_go_to_the_least_loaded_actor(server: ServerThread) -> None:
    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            jobs = [await client.submit("echo", {"delay_ms": 20_000}) for _ in range(2)]
            pools = (await asyncio.to_thread(requests.get, f"{server.url}/pools", timeout=10)).json()
            for job in jobs:
                await client.send({"op": "cancel", "job": job})
                await client.result(job)
            return pools

    pools = {pool["kind"]: pool for pool in run(scenario())["pools"]}
    assert [actor["name"] for actor in pools["audio.length"]["actors"]] == ["audio-0"]
    assert [actor["name"] for actor in pools["euro.results"]["actors"]] == ["euro-0"]
    echo = pools["echo"]["actors"]
    assert [actor["name"] for actor in echo] == ["echo-0", "echo-1"]
    assert [actor["inflight"] for actor in echo] == [1, 1], "two slow jobs went to two actors"


def test_a_job_cut_off_by_a_dying_actor_runs_again_and_succeeds(server: ServerThread) -> None:
    import ray

    running: list[Any] = []

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("echo", {"n": "survivor", "delay_ms": 2000})
            running.append(server.app.state.services.table.get(job))  # finished jobs leave the table
            pools = (await asyncio.to_thread(requests.get, f"{server.url}/pools", timeout=10)).json()["pools"]
            echo = next(pool for pool in pools if pool["kind"] == "echo")
            busy = running[0].running.slot.name  # the actor running this job: another may be busy too
            mine = next(actor for actor in echo["actors"] if actor["name"] == busy)
            assert mine["inflight"] >= 1
            victim = ray.get_actor(busy, namespace=server.settings.ray_namespace)
            ray.kill(victim, no_restart=False)  # the actor dies mid-job; Ray starts it again
            return await client.result(job, timeout=60)

    frame = run(scenario(), timeout=90)
    assert frame["status"] == "succeeded" and frame["result"] == {"n": "survivor", "delay_ms": 2000}
    [job] = running
    assert job is not None and job.id == frame["job"] and job.attempts == 2


def test_each_kinds_actors_carry_a_class_name_of_their_own(server: ServerThread) -> None:
    from ray._private import state

    server.wait_ready()
    classes: dict[str, set[str]] = {}
    for actor in state.actors().values():
        if actor["State"] == "ALIVE":
            classes.setdefault(actor["Name"], set()).add(actor["ActorClassName"])
    pools = server.app.state.services.dispatcher.pools
    expected = {"audio.length": "AudioLength", "euro.results": "EuroResults", "echo": "Echo"}
    for kind, class_name in expected.items():
        assert all(classes[name] == {class_name} for name in (slot.name for slot in pools[kind].slots)), (kind, classes)


def test_metrics_and_readiness_for_operators(server: ServerThread) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    server.wait_ready()
    before = scrape()
    # Without tokens every client is an address tenant: counted as `anonymous`, so the label set stays bounded.
    succeeded = ("ami_jobs_total", (("kind", "echo"), ("status", "succeeded"), ("tenant", "anonymous")))

    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            for n in range(5):
                await client.result(await client.submit("echo", {"metrics": n}))
            after = await asyncio.to_thread(scrape)
            assert after[("ami_connections", ())] >= 1
            assert after[succeeded] - before.get(succeeded, 0) == 5
            assert after[("ami_frames_total", (("direction", "in"),))] > before.get(
                ("ami_frames_total", (("direction", "in"),)), 0)
            assert after[("ami_job_seconds_count", (("kind", "echo"),))] >= 5
            assert after[("ami_store_seconds_count", ())] >= 10  # each job's save and its result's
            assert after[("ami_pool_actors", (("kind", "echo"),))] == 2
            assert ("ami_pool_queued", (("kind", "audio.length"), ("tenant", "anonymous"))) in after
            assert all("job" not in dict(labels) for _, labels in after), "never a job id as a label"

    run(scenario())
    ready = requests.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}


def test_the_server_and_the_actors_report_to_rays_metrics(server: ServerThread) -> None:
    """What Ray's dashboard and Prometheus read: the node's metrics export, fed by the server (job and pool
    series) and by the actors (jobs run and their run time), labelled by kind and status, never by job."""
    from prometheus_client.parser import text_string_to_metric_families

    node = ray._private.worker.global_worker.node
    assert node is not None
    port = node.metrics_export_port

    async def jobs() -> None:
        async with await Client.connect(server.ws_url) as client:
            for n in range(3):
                await client.result(await client.submit("echo", {"ray metrics": n}))

    run(jobs())
    wanted = {("ray_ami_jobs_total", "echo", "status", "succeeded"), ("ray_ami_actor_jobs_total", "echo", "outcome",
                                                                     "succeeded"),
              ("ray_ami_actor_run_seconds_count", "echo", None, None), ("ray_ami_pool_actors", "echo", None, None)}
    seen: set[tuple[str, str, str | None, str | None]] = set()

    def exported() -> bool:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_ami_") and sample.value > 0:
                    assert "job" not in sample.labels, sample
                    for name, kind, key, value in wanted:
                        if sample.name == name and sample.labels.get("kind") == kind and (
                                key is None or sample.labels.get(key) == value):
                            seen.add((name, kind, key, value))
        return seen == wanted

    assert wait_until(exported, 90), f"missing from Ray's metrics: {wanted - seen}"
