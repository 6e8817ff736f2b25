"""Tokens and browser origins: who may use the socket and the REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.config import Settings
from tests.conftest import test_settings
from tests.helpers import Client, FixtureHTTP, ServerThread, run

ECHO_ONLY = (("audio.length", 0), ("euro.results", 0), ("echo", 1))


@pytest.fixture(scope="module")
def guarded(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = test_settings(http, tmp_path_factory.mktemp("access"), pools=ECHO_ONLY, tokens=("s3cret", "other"),
                             allowed_origins=("https://app.example",))
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


def test_tokens_and_origins_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.load([], environ={"AMI_TOKENS": " a, b ,", "AMI_ALLOWED_ORIGINS": "*"})
    assert settings.tokens == ("a", "b") and settings.allowed_origins == ("*",)
    assert Settings.load([], environ={}).tokens == ()
