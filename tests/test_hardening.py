"""One frame, one client or one bad record never stops the service: input hardening and bounded memory."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.silent import SilentClient
from server.store import SqliteStore
from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for, wait_until

SURROGATE_REF = '{"op":"submit","kind":"echo","args":{"a":1},"ref":"\\ud800"}'


class FlakyStore(SqliteStore):
    """A real SQLite store whose writes fail on demand, the way a full disk or a bad record fails them."""

    def __init__(self, path: Path) -> None:
        self.fail_all = threading.Event()
        self.fail_finishes = threading.Event()
        self.finish_failed = threading.Event()
        faults = self

        class FlakyConnection(sqlite3.Connection):
            def executemany(self, sql: str, params: Any, /) -> sqlite3.Cursor:
                if faults.fail_all.is_set():
                    raise OSError("injected: the disk is full")
                finishing = sql == SqliteStore.INSERT and any(row[5] in ("succeeded", "failed", "cancelled")
                                                              for row in params)
                if finishing and faults.fail_finishes.is_set():  # a result is saved as its whole record
                    faults.finish_failed.set()
                    raise ValueError("injected: a record that cannot be written")
                return super().executemany(sql, params)

        super().__init__(path, connection_class=FlakyConnection)


@pytest.fixture(scope="module")
def flaky(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ServerThread, FlakyStore]]:
    path = tmp_path_factory.mktemp("flaky")
    store = FlakyStore(path / "jobs.sqlite3")
    settings = settings_for(http, path, pools=(("audio.length", 0), ("euro.results", 0), ("echo", 1)))
    with ServerThread(settings, store=store) as running:
        yield running, store


@pytest.fixture(scope="module")
def small_outbox(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("outbox"), max_outbox_bytes=256 * 1024,
                             max_frame_bytes=128 * 1024,
                             pools=(("audio.length", 0), ("euro.results", 0), ("echo", 1)))
    with ServerThread(settings) as running:
        yield running


def test_a_lone_surrogate_is_refused_and_the_service_goes_on(server: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client, await Client.connect(server.ws_url) as other:
            await client.send(SURROGATE_REF)
            refused = await client.recv()
            assert (refused["type"], refused["code"]) == ("error", "bad_request")
            assert "ref" in refused["message"] and "ref" not in refused
            await client.send('{"op":"submit","kind":"echo","args":{"x":"\\udfff"},"ref":"r2"}')
            refused = await client.recv()
            assert (refused["code"], refused["ref"]) == ("invalid_args", "r2")
            assert "args.x" in refused["message"]
            await client.send('{"op":"ping","ref":"\\ud800"}')
            assert (await client.recv())["code"] == "bad_request"
            await client.send('{"op":"status","job":"\\ud800abc"}')
            assert (await client.recv())["code"] == "bad_request"
            await client.send('{"op":"watch","jobs":["ok","\\udc00"],"ref":"w"}')
            assert (await client.recv())["code"] == "bad_request"
            await client.send('{"op":"ping","ref":"pair \\ud83d\\ude00"}')  # a valid pair is a character
            assert await client.recv() == {"type": "pong", "ref": "pair \U0001F600"}
            job = await client.submit("echo", {"after": "surrogates"}, ref="r3")
            assert (await client.result(job))["result"] == {"after": "surrogates"}
            other_job = await other.submit("echo", {"other": True})
            assert (await other.result(other_job))["status"] == "succeeded"

    run(scenario())
    response = requests.post(server.url + "/jobs", data=b'{"kind":"echo","args":{"x":"\\ud800"}}', timeout=30)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_args"
    assert requests.post(server.url + "/jobs", json={"kind": "echo", "args": {}}, timeout=30).status_code == 201
    assert requests.get(server.url + "/healthz", timeout=30).json() == {"ok": True}


def test_a_writer_failure_closes_the_socket_with_1011_instead_of_going_silent(server: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            await client.send({"op": "ping", "ref": "hello"})
            await client.recv()
            [session] = server.app.state.services.sessions
            # No client frame can carry an unencodable string any more; a server-made one stands in for a bug.
            server.server_loop().call_soon_threadsafe(session.push, {"type": "pong", "ref": "\ud800"})
            with pytest.raises(Exception) as closed:
                await client.recv(timeout=30)
            assert getattr(closed.value, "rcvd", None) is not None and closed.value.rcvd.code == 1011  # type: ignore[attr-defined]

    with _only_session(server):
        run(scenario())


class _only_session:
    """Wait until every other test's connection to the shared server has gone, so the session is ours."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server

    def __enter__(self) -> None:
        sessions = self.server.app.state.services.sessions
        assert wait_until(lambda: not sessions, 30), "other connections stayed open"

    def __exit__(self, *exc: object) -> None:
        pass



def test_watch_sends_each_result_once_per_frame_and_plain_watch_is_capped(server: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("echo", {"once": True})
            await client.result(job)
            await client.send({"op": "watch", "jobs": [job] * 50, "ref": "dup"})
            await client.send({"op": "ping", "ref": "after"})
            frames = [await client.recv(), await client.recv()]
            assert [frame["type"] for frame in frames] == ["result", "pong"]
            await client.send("watch " + " ".join([job] * 5))
            await client.send("ping")
            assert [(await client.recv())["type"], (await client.recv())["type"]] == ["result", "pong"]
            await client.send("watch " + " ".join(f"id{n}" for n in range(1001)))
            capped = await client.recv()
            assert (capped["type"], capped["code"]) == ("error", "too_large")
            await client.send({"op": "frobnicate"})
            unknown = await client.recv()
            assert unknown["code"] == "unknown_op" and "help" in unknown["message"]

    run(scenario())


def test_rest_bodies_are_bounded_and_malformed_ones_get_422(server: ServerThread) -> None:
    limit = server.settings.max_frame_bytes
    big = json.dumps({"kind": "echo", "args": {"pad": "x" * limit}})
    for path in ("/jobs", "/audio/length", "/euro/results"):
        response = requests.post(server.url + path, data=big, timeout=30)
        assert response.status_code == 413, path

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    assert requests.post(server.url + "/jobs", data=chunks(), timeout=30).status_code == 413
    response = requests.post(server.url + "/jobs", data="[" * (limit - 1), timeout=30)
    assert response.status_code == 422 and response.json()["error"]["code"] == "bad_json"
    deep = '{"kind":"echo","args":' + "[" * 20_000 + "]" * 20_000 + "}"
    assert requests.post(server.url + "/jobs", data=deep, timeout=30).status_code == 422
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200


def test_finished_jobs_leave_memory_and_are_read_back_from_the_store(server: ServerThread) -> None:
    table = server.app.state.services.table

    async def scenario() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        async with await Client.connect(server.ws_url) as client:
            jobs = [await client.submit("echo", {"n": n, "pad": "x" * 1000}, ref=str(n)) for n in range(200)]
            for job in jobs:
                await client.result(job)
            await client.send({"op": "status", "job": jobs[0]})
            status = await client.recv()
            await client.send({"op": "watch", "jobs": [jobs[-1]], "ref": "later"})
            return jobs, status, await client.recv()

    jobs, status, later = run(scenario())
    assert not set(jobs) & set(table.jobs), "finished jobs are not kept in memory"
    assert status["state"] == "succeeded"
    assert (later["status"], later["result"]["n"], later["ref"]) == ("succeeded", 199, "later")
    assert requests.get(f"{server.url}/jobs/{jobs[5]}", timeout=30).json()["result"]["n"] == 5


def test_a_store_that_cannot_save_answers_busy_and_health_says_so(flaky: tuple[ServerThread, FlakyStore]) -> None:
    server, store = flaky

    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            store.fail_all.set()
            try:
                await client.send({"op": "submit", "kind": "echo", "args": {}, "ref": "lost"})
                refused = await client.recv_until(lambda frame: frame.get("ref") == "lost")
                assert (refused["type"], refused["code"]) == ("error", "busy")
                health = requests.get(server.url + "/healthz", timeout=30)
                assert health.status_code == 503 and "could not save" in health.json()["reason"]
                post = requests.post(server.url + "/jobs", json={"kind": "echo", "args": {}}, timeout=30)
                assert post.status_code == 503
            finally:
                store.fail_all.clear()
            job = await client.submit("echo", {"healed": True}, ref="healed")
            assert (await client.result(job))["result"] == {"healed": True}
            assert requests.get(server.url + "/healthz", timeout=30).status_code == 200

    run(scenario())


def test_a_result_is_pushed_only_once_saved_and_retried_until_it_is(flaky: tuple[ServerThread, FlakyStore]) -> None:
    server, store = flaky

    async def scenario() -> None:
        async with await Client.connect(server.ws_url) as client:
            store.finish_failed.clear()
            store.fail_finishes.set()
            try:
                job = await client.submit("echo", {"saved": "eventually"}, ref="s")
                assert await asyncio.to_thread(store.finish_failed.wait, 30)
                await client.send({"op": "ping", "ref": "meanwhile"})
                frame = await client.recv()
                assert frame == {"type": "pong", "ref": "meanwhile"}, "no result before it is saved"
                await client.send({"op": "status", "job": job})
                assert (await client.recv())["state"] == "running"
            finally:
                store.fail_finishes.clear()
            result = await client.result(job)
            assert (result["status"], result["result"]) == ("succeeded", {"saved": "eventually"})

    run(scenario())
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200


def test_a_result_that_never_saves_ends_as_failed_internal(flaky: tuple[ServerThread, FlakyStore]) -> None:
    server, store = flaky
    table = server.app.state.services.table
    table.SAVE_RETRIES = 1

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            store.fail_finishes.set()
            try:
                job = await client.submit("echo", {"saved": "never"})
                return await client.result(job)
            finally:
                store.fail_finishes.clear()

    try:
        result = run(scenario())
    finally:
        del table.SAVE_RETRIES
    assert (result["status"], result["error"]["code"]) == ("failed", "internal")
    assert "job store" in result["error"]["message"]


def test_a_client_that_never_reads_is_cut_off_and_others_are_served(small_outbox: ServerThread) -> None:
    cut = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "unread" in record.getMessage():
                cut.set()

    async def make_jobs() -> list[str]:
        async with await Client.connect(small_outbox.ws_url) as client:
            jobs = []
            for n in range(40):
                jobs.append(await client.submit("echo", {"n": n, "pad": "y" * 100_000}))
                await client.result(jobs[-1])
            return jobs

    jobs = run(make_jobs())
    spy = Spy()
    logging.getLogger("server.session").addHandler(spy)
    silent = SilentClient(small_outbox.ws_url)
    try:
        for _ in range(3):
            silent.send(json.dumps({"op": "watch", "jobs": jobs}))
        assert cut.wait(60), "the never-reading client was not cut off"

        async def ping() -> dict[str, Any]:
            async with await Client.connect(small_outbox.ws_url) as client:
                await client.send("ping")
                return await client.recv()

        assert run(ping()) == {"type": "pong"}
        frames, close = silent.read_until_closed()
        assert close is not None and close.code == 4008, close
        assert frames < 40, "what it left unread was dropped"
    finally:
        logging.getLogger("server.session").removeHandler(spy)
        silent.close()
    sessions = small_outbox.app.state.services.sessions
    assert wait_until(lambda: not sessions, 30), "the cut-off session is gone"


def test_cancelling_a_running_job_logs_no_error(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> dict[str, Any]:
        async with await Client.connect(server.ws_url) as client:
            job = await client.submit("echo", {"delay_ms": 20_000}, ref="long")
            await client.send({"op": "status", "job": job})
            assert (await client.recv_until(lambda frame: frame.get("type") == "status"))["state"] == "running"
            await client.send({"op": "cancel", "job": job})
            return await client.result(job)

    pool = server.app.state.services.dispatcher.pools["echo"]
    with caplog.at_level(logging.WARNING):
        assert run(scenario())["status"] == "cancelled"
        assert wait_until(lambda: sum(slot.inflight for slot in pool.slots) == 0, 30), "the cancelled call came back"
        gc.collect()  # asyncio reports an unretrieved exception when its future is collected
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]


def test_readiness_says_when_the_store_cannot_save(flaky: tuple[ServerThread, FlakyStore]) -> None:
    server, store = flaky
    server.wait_ready()
    assert requests.post(server.url + "/jobs", json={"kind": "echo", "args": {}}, timeout=30).status_code == 201
    assert requests.get(server.url + "/readyz", timeout=30).status_code == 200  # a write succeeded since
    store.fail_all.set()
    try:
        async def submit() -> dict[str, Any]:
            async with await Client.connect(server.ws_url) as client:
                await client.send({"op": "submit", "kind": "echo", "args": {}, "ref": "x"})
                return await client.recv_until(lambda frame: frame.get("ref") == "x")

        assert run(submit())["code"] == "busy"
        ready = requests.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 503 and "could not save" in " ".join(ready.json()["reasons"])
    finally:
        store.fail_all.clear()
