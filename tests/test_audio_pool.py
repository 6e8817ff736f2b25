"""Downloads that never end do not take an audio actor's every slot: the pool on real Ray, with stuck HTTP servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.audio_files import encode
from tests.helpers import Client, FixtureHTTP, ServerThread, run, settings_for
from tests.unit.test_audio import serve


class Stuck:
    """Handlers that send their headers and then nothing; each notes when its client hangs up."""

    def __init__(self) -> None:
        self.hung_up = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.flush()
        handler.connection.settimeout(120)
        try:
            if handler.connection.recv(1) == b"":  # the client shut its side: the download was stopped
                self.hung_up.release()
        except OSError:
            self.hung_up.release()



@pytest.fixture(scope="module")
def audio_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("audio"), fetch_timeout=120.0,
                             pools=(("audio.length", 1), ("euro.results", 0), ("echo", 0)))
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


def test_eight_stuck_downloads_do_not_starve_a_good_one_and_cancel_frees_them(
        http: FixtureHTTP, audio_server: ServerThread) -> None:
    stuck = Stuck()
    stuck_url = http.add("/stuck.wav", stuck)
    good_url = serve(http, encode(800, 8000, "WAV", "PCM_16"))

    async def scenario() -> dict[str, Any]:
        async with await Client.connect(audio_server.ws_url) as client:
            stuck_jobs = [await client.submit("audio.length", {"url": f"{stuck_url}?{n}"}, ref=f"s{n}")
                          for n in range(8)]
            good = await client.submit("audio.length", {"url": good_url}, ref="good")
            result = await client.result(good)
            assert not stuck.hung_up.acquire(blocking=False), "the stuck ones were still stuck"
            for job in stuck_jobs:
                await client.send({"op": "cancel", "job": job})
            for job in stuck_jobs:
                assert (await client.result(job))["status"] == "cancelled"
            return result

    result = run(scenario())
    assert (result["status"], result["result"]["frames"]) == ("succeeded", 800)
    for _ in range(8):  # each cancelled job's download let go of its connection, without waiting for a deadline
        assert stuck.hung_up.acquire(timeout=30), "a cancelled download kept its connection"
