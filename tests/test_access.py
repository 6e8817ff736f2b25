"""Tokens and browser origins: who may use the socket and the REST API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for

ECHO_ONLY = (("audio.length", 0), ("euro.results", 0), ("echo", 1))


@pytest.fixture(scope="module")
def guarded(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("access"), pools=ECHO_ONLY, tokens=("s3cret", "other"),
                             allowed_origins=("https://app.example",), allowed_hosts=("app.example",),
                             auth_timeout=1.0)
    with ServerThread(settings) as running:
        yield running


async def ping(url: str, **options: object) -> dict[str, object]:
    async with websockets.connect(url, **options) as ws:  # type: ignore[arg-type]
        client = Client(ws)
        await client.send("ping")
        return await client.recv()


def test_a_token_is_required_when_tokens_are_set(guarded: ServerThread) -> None:
    async def refused(url: str) -> tuple[dict[str, object], int | None]:
        async with websockets.connect(url) as ws:
            frame = await Client(ws).recv()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return frame, ws.close_code

    for url in (guarded.ws_url, guarded.ws_url + "?token=wrong"):
        frame, code = run(refused(url))
        assert (frame["type"], frame["code"], code) == ("error", "unauthorized", 4001)
    assert run(ping(guarded.ws_url + "?token=s3cret")) == {"type": "pong"}
    assert run(ping(guarded.ws_url, additional_headers={"Authorization": "Bearer other"})) == {"type": "pong"}


def test_rest_needs_the_token_too(guarded: ServerThread) -> None:
    body = {"kind": "echo", "args": {"x": 1}}
    assert requests.post(f"{guarded.url}/jobs", json=body, timeout=10).status_code == 401
    made = requests.post(f"{guarded.url}/jobs", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=10)
    assert made.status_code == 201
    job = made.json()["job"]
    missing = requests.get(f"{guarded.url}/task/{job}", timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert requests.get(f"{guarded.url}/jobs/{job}?token=s3cret", timeout=10).status_code == 200


def test_browsers_may_connect_only_from_allowed_origins(guarded: ServerThread) -> None:
    url = guarded.ws_url + "?token=s3cret"
    with pytest.raises(InvalidStatus) as caught:
        run(ping(url, origin="https://evil.example"))
    assert caught.value.response.status_code == 403
    assert run(ping(url, origin=f"http://127.0.0.1:{guarded.port}")) == {"type": "pong"}  # its own page
    assert run(ping(url, origin="https://app.example")) == {"type": "pong"}


@pytest.fixture(scope="module")
def open_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    """The default configuration: no tokens, no extra hosts or origins."""
    with ServerThread(settings_for(http, tmp_path_factory.mktemp("open"), pools=ECHO_ONLY)) as running:
        yield running


async def handshake_status(server: ServerThread, host: str, origin: str | None = None) -> int:
    """The HTTP status of a handshake that names `host` but connects to the server on 127.0.0.1."""
    try:
        async with websockets.connect(f"ws://{host}:{server.port}/ws", host="127.0.0.1", port=server.port,
                                      origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send("ping")
            await ws.recv()
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def test_only_the_servers_own_host_names_are_served(open_server: ServerThread, guarded: ServerThread) -> None:
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert requests.get(f"{open_server.url}/healthz", headers={"Host": f"{host}:{open_server.port}"},
                            timeout=10).status_code == 200, host
        assert run(handshake_status(open_server, host)) == 101, host
    for host in ("evil.example", "127.0.0.1.evil.example", "app.example"):
        response = requests.get(f"{open_server.url}/", headers={"Host": f"{host}:{open_server.port}"}, timeout=10)
        assert response.status_code == 400, host
        assert run(handshake_status(open_server, host)) == 400, host
    # DNS rebinding: a page on evil.example whose name now points here; Origin and Host agree, and it is refused.
    assert run(handshake_status(open_server, "evil.example", origin=f"http://evil.example:{open_server.port}")) == 400
    assert requests.get(f"{guarded.url}/", headers={"Host": "app.example"}, timeout=10).status_code == 200


def test_origins_are_compared_by_scheme_host_and_port(open_server: ServerThread) -> None:
    port = open_server.port
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        assert run(handshake_status(open_server, "127.0.0.1", origin)) == 101, origin
    for origin in (f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", "http://127.0.0.1", "null",
                   f"http://evil.example:{port}", "file://"):
        assert run(handshake_status(open_server, "127.0.0.1", origin)) == 403, origin


def test_rest_writes_from_other_web_pages_are_refused(open_server: ServerThread) -> None:
    job = json.dumps({"kind": "echo", "args": {"x": 1}})
    old = json.dumps({"draw_date": "26-03-2024"})
    for path, body in (("/jobs", job), ("/euro/results", old), ("/audio/length", '{"audio_url":"http://x/a.wav"}')):
        foreign = requests.post(open_server.url + path, data=body, timeout=10,
                                headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "forbidden", path
        as_form = requests.post(open_server.url + path, data=body, timeout=10,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert as_form.status_code == 415, path
    own = requests.post(open_server.url + "/jobs", data=job, timeout=10,
                        headers={"Origin": f"http://127.0.0.1:{open_server.port}", "Content-Type": "text/plain"})
    assert own.status_code == 201
    for headers in ({}, {"Content-Type": "application/json"}, {"Content-Type": "application/json; charset=utf-8"}):
        assert requests.post(open_server.url + "/jobs", data=job, headers=headers, timeout=10).status_code == 201


def test_a_token_in_the_first_frame(guarded: ServerThread) -> None:
    async def scenario() -> None:
        async with await Client.connect(guarded.ws_url) as client:
            await client.send({"op": "submit", "kind": "echo", "args": {}, "ref": "early"})
            early = await client.recv()
            assert (early["type"], early["code"], early["ref"]) == ("error", "unauthorized", "early")
            await client.send("ping")
            assert await client.recv() == {"type": "pong"}
            await client.send({"op": "auth", "token": "s3cret", "ref": "a"})
            assert await client.recv() == {"type": "authorized", "ref": "a"}
            job = await client.submit("echo", {"after": "auth"})
            assert (await client.result(job))["result"] == {"after": "auth"}
        async with await Client.connect(guarded.ws_url) as client:
            await client.send("auth other")
            assert await client.recv() == {"type": "authorized"}
            await client.send("status nope")
            assert (await client.recv())["code"] == "not_found"
        async with await Client.connect(guarded.ws_url) as client:
            await client.send("auth wrong")
            refused = await client.recv()
            assert (refused["type"], refused["code"]) == ("error", "unauthorized")
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

    run(scenario())


def test_operator_endpoints_need_the_token(guarded: ServerThread) -> None:
    for path in ("/pools", "/config.json", "/metrics"):
        assert requests.get(guarded.url + path, timeout=10).status_code == 401, path
        assert requests.get(guarded.url + path, headers={"Authorization": "Bearer s3cret"},
                            timeout=30).status_code == 200, path
    # Probes send no token: they get the status, and only a token holder gets the reasons.
    assert requests.get(guarded.url + "/healthz", timeout=10).json() == {"ok": True}
    ready = requests.get(guarded.url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert requests.get(guarded.url + "/readyz", headers={"Authorization": "Bearer s3cret"},
                        timeout=30).json() == {"ready": True, "reasons": []}
    assert requests.get(guarded.url + "/", timeout=10).status_code == 200  # the page itself holds no secret


def test_tokens_never_reach_the_log(tmp_path: Path) -> None:
    from bench.servers import free_port
    from tests.processes import server_process

    port = free_port()
    process = server_process("--port", str(port), "--enable-echo", "--data-dir", str(tmp_path), "--no-dashboard",
                             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1", "--ray-num-cpus", "1",
                             "--object-store-mb", "100", "--tokens", "Tok3nValue", "--log-level", "info")
    try:
        process.wait_for_line(lambda line: line.startswith("Socket:"))
        assert run(ping(f"ws://127.0.0.1:{port}/ws?token=Tok3nValue")) == {"type": "pong"}

        async def refused() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token=Wr0ngValue&x=1") as ws:
                assert json.loads(await ws.recv())["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                return ws.close_code

        assert run(refused()) == 4001
        assert requests.get(f"http://127.0.0.1:{port}/pools?token=Tok3nValue", timeout=30).status_code == 200
        posted = requests.post(f"http://127.0.0.1:{port}/jobs?token=Tok3nValue", json={"kind": "echo", "args": {}},
                               timeout=30)
        job = posted.json()["job"]
        assert requests.get(f"http://127.0.0.1:{port}/jobs/{job}?token=Tok3nValue", timeout=30).status_code == 200
        assert process.stop() == 0
        log = "".join(process.output)
        assert "token=***" in log, "the request lines are logged, redacted"
        assert "Tok3nValue" not in log and "Wr0ngValue" not in log
        assert "/jobs/{id}?token=***" in log and job not in log, "a job id in a log would let its reader use it"
    finally:
        if process.popen.poll() is None:
            process.kill()
