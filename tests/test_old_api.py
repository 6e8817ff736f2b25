"""The old REST API exactly as old clients saw it: the old client's own calls replayed, field by field."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests

from tests.audio_files import encode
from tests.euro_pages import current_page
from tests.helpers import Fixture, FixtureHTTP, ServerThread, settings_for


def old_client(base: str, path: str, payload: dict[str, Any], polled: Callable[[], None] = lambda: None
               ) -> tuple[list[str], int, dict[str, Any]]:
    """What the old project's client did: POST with `callback`, then GET /task/{id}, again while it says 202.

    Returns every status it saw while waiting, and the final answer; `polled` runs after each 202."""
    created = requests.post(base + path, json=payload, timeout=30)
    assert created.status_code == 201, created.text
    task = created.json()["id"]
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = requests.get(f"{base}/task/{task}", timeout=30)
        data = answer.json()
        if answer.status_code != 202:
            return seen, answer.status_code, data
        seen.append(data["status"])
        polled()
        time.sleep(0.05)  # the old client's polling interval: the polling is what is under test
    raise AssertionError("the task never finished")


class SlowWav:
    """A WAV whose server waits until told; `requested` is set once a job asked for it (the job is running)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.release = threading.Event()

    def release_once_running(self) -> None:
        if self.requested.is_set():
            self.release.set()


@pytest.fixture
def slow_wav(http: FixtureHTTP) -> Iterator[tuple[str, SlowWav]]:
    wav = SlowWav()
    body = encode(4000, 8000, "WAV", "PCM_16")

    def slow(handler: BaseHTTPRequestHandler) -> None:
        wav.requested.set()
        wav.release.wait(60)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    yield http.add(f"/old/slow-{len(http.routes)}.wav", slow), wav
    wav.release.set()


def test_the_old_client_sees_pending_then_the_old_result_shapes(server: ServerThread, http: FixtureHTTP,
                                                                slow_wav: tuple[str, SlowWav]) -> None:
    url, wav = slow_wav  # the download waits until the client has polled the running task
    seen, status, data = old_client(server.url, "/audio/length", {"audio_url": url, "callback": True},
                                    wav.release_once_running)
    assert seen and set(seen) == {"PENDING"}, "a running task says PENDING, as Celery without track_started did"
    assert (status, data["status"], data["error"], data["result"]) == (200, "SUCCESS", None, {"audio_length": 0.5})
    assert set(data) == {"id", "status", "error", "result"}

    http.add("/euro/22-03-2024", Fixture(body=current_page("Friday 22nd March 2024", [1, 8, 22, 34, 50], [2, 12],
                                                           drawn=([34, 1, 50, 22, 8], [12, 2]))))
    _, status, data = old_client(server.url, "/euro/results", {"draw_date": "22-03-2024", "callback": "false"})
    assert (status, data["status"], data["result"]) == (200, "SUCCESS", [34, 1, 50, 22, 8, 12, 2]), \
        "the old worker read the balls in drawn order"

    # A well-formed date that is no draw day: 201, as the old API answered, and the task fails with the reason.
    _, status, data = old_client(server.url, "/euro/results", {"draw_date": "03-01-2024"})
    assert (status, data["status"], data["result"]) == (200, "FAILURE", None) and "Wednesday" in data["error"]

    _, status, data = old_client(server.url, "/audio/length", {"audio_url": http.url("/old/missing.wav")})
    assert (status, data["status"], data["result"]) == (200, "FAILURE", None)
    assert "HTTP 404" in data["error"]


def test_an_unknown_task_has_the_old_body_and_a_status_no_one_waits_on(server: ServerThread) -> None:
    answer = requests.get(f"{server.url}/task/never-issued", timeout=30)
    assert answer.status_code == 404
    assert answer.json() == {"id": "never-issued", "status": "NOT_FOUND", "error": "no such task", "result": None}


def test_422_bodies_carry_fastapis_detail_and_the_old_coercions_hold(server: ServerThread) -> None:
    def post(path: str, body: object) -> requests.Response:
        return requests.post(server.url + path, json=body, timeout=30)

    malformed = post("/euro/results", {"draw_date": "2024-01-03"})  # not the old DD-MM-YYYY: refused up front
    assert malformed.status_code == 422
    [detail] = malformed.json()["detail"]
    assert detail["loc"] == ["body", "draw_date"] and detail["msg"] and detail["type"]
    assert post("/euro/results", {"draw_date": "31-02-2024"}).status_code == 422, "no such day"
    missing = post("/audio/length", {"callback": True})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "audio_url"]
    assert missing.json()["detail"][0]["msg"] == "field required"
    number = post("/audio/length", {"audio_url": 123})  # made a string, as pydantic 1 did, then judged as a URL
    assert number.status_code == 422 and "http(s) URL" in number.json()["detail"][0]["msg"]
    assert post("/audio/length", {"audio_url": [1]}).json()["detail"][0]["msg"] == "str type expected"
    for word in ("false", "0", "no", "off", "true", "1", "yes", "on"):
        assert post("/euro/results", {"draw_date": "22-03-2024", "callback": word}).status_code == 201, word
    maybe = post("/euro/results", {"draw_date": "22-03-2024", "callback": "maybe"})
    assert maybe.status_code == 422 and maybe.json()["detail"][0]["loc"] == ["body", "callback"]
    assert requests.post(server.url + "/jobs", data=b"{nope", timeout=30).json()["detail"][0]["loc"] == ["body"]


def test_started_only_when_a_setting_asks_for_it(ray_session: None, http: FixtureHTTP,
                                                 tmp_path_factory: pytest.TempPathFactory,
                                                 slow_wav: tuple[str, SlowWav]) -> None:
    url, wav = slow_wav
    settings = settings_for(http, tmp_path_factory.mktemp("started"), old_api_started=True,
                            pools=(("audio.length", 1), ("euro.results", 0), ("echo", 0)))
    with ServerThread(settings) as tracked:
        tracked.wait_ready()
        seen, status, data = old_client(tracked.url, "/audio/length", {"audio_url": url}, wav.release_once_running)
        assert "STARTED" in seen and (status, data["status"]) == (200, "SUCCESS")
