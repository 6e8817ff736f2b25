"""The browser page, end to end in a real headless Chromium against the real server on real Ray."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from bench.speech_audio import repeated, speech
from tests.audio_files import encode
from tests.euro_pages import current_page
from tests.helpers import Fixture, FixtureHTTP, ServerThread, settings_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def page_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("page"), enable_echo=False,
                             pools=(("audio.length", 1), ("euro.results", 1), ("audio.speech", 1)),
                             dashboard_url="http://127.0.0.1:8265")
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, page_server: ServerThread) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    opened = context.new_page()
    opened.goto(page_server.url + "/")
    expect(opened.locator("#connection")).to_have_text("Connected")
    yield opened
    context.close()


@pytest.fixture
def stall() -> Iterator[threading.Event]:
    release = threading.Event()
    yield release
    release.set()


def stalled_audio(http: FixtureHTTP, name: str, release: threading.Event) -> str:
    body = encode(8000 * 3, 8000, "WAV", "PCM_16")

    def slow(handler: BaseHTTPRequestHandler) -> None:
        release.wait(60)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return http.add(f"/page/{name}", slow)


def row_for(page: Page, text: str) -> Locator:
    return page.locator("#jobs tbody tr", has_text=text)


def test_submit_both_kinds_and_see_the_results(page: Page, http: FixtureHTTP) -> None:
    url = http.add("/page/two-seconds.wav", Fixture(body=encode(16000 * 2, 16000, "WAV", "PCM_16", channels=2)))
    http.add("/euro/26-03-2024", Fixture(body=current_page("Tuesday 26th March 2024", [2, 13, 14, 26, 29], [5, 6])))
    page.get_by_label("Audio file URL").fill(url)
    page.get_by_role("button", name="Measure").click()
    page.get_by_label("Month").fill("2024-03")
    expect(page.get_by_label("Draw").locator("option")).to_have_count(9)  # only the draw days of March 2024
    page.get_by_label("Draw").select_option("2024-03-26")
    page.get_by_role("button", name="Get numbers").click()

    audio = page.locator("#jobs tbody tr", has_text="two-seconds.wav")
    expect(audio.locator(".state")).to_have_text("done")
    expect(audio.locator(".result")).to_contain_text("0:02.000")
    expect(audio.locator(".result")).to_contain_text("16 kHz · 2 ch · WAV")
    euro = page.locator("#jobs tbody tr", has_text="26 Mar 2024")
    expect(euro.locator(".state")).to_have_text("done")
    expect(euro.locator(".balls li.ball")).to_have_text(["2", "13", "14", "26", "29"])
    expect(euro.locator(".balls li.star")).to_have_text(["5", "6"])
    expect(euro.locator(".time")).to_have_text(re.compile(r"\d+(\.\d+)? (ms|s)"))

    expect(page.get_by_role("link", name="Ray dashboard")).to_have_attribute("href", "http://127.0.0.1:8265")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)

    page.reload()  # the table is kept
    expect(page.locator("#connection")).to_have_text("Connected")
    expect(page.locator("#jobs tbody tr", has_text="two-seconds.wav").locator(".result")).to_contain_text("0:02.000")
    expect(page.locator("#jobs tbody tr", has_text="26 Mar 2024").locator(".balls li")).to_have_count(7)


def test_speech_is_drawn_on_a_timeline_that_fills_in_as_progress_arrives(
        page: Page, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> None:
    workdir = tmp_path_factory.mktemp("page-speech")
    path, _ = speech(workdir)
    url = http.add("/page/long-talk.wav", Fixture(body=repeated(path, workdir, 60).read_bytes()))
    page.get_by_label("Speech audio URL").fill(url)
    page.get_by_role("button", name="Find speech").click()
    row = row_for(page, "long-talk.wav")
    expect(row.locator(".result .muted")).to_contain_text("in the first")  # drawn while it runs
    expect(row.locator(".kind")).to_have_text("Speech")
    expect(row.locator(".state")).to_have_text("done", timeout=60_000)
    expect(row.locator(".timeline .segment")).to_have_count(180)
    expect(row.locator(".result .muted")).to_contain_text("180 stretches of speech")
    expect(row.locator(".timeline")).to_have_attribute("aria-label", re.compile(r"^Speech 0:00\.\d{3} to "))
    page.screenshot(path=str(ARTIFACTS / "page-speech.png"), full_page=True)


def test_a_failing_url_shows_its_error(page: Page, http: FixtureHTTP) -> None:
    url = http.url("/page/missing.wav")
    page.get_by_label("Audio file URL").fill(url)
    page.get_by_label("Audio file URL").press("Enter")  # the keyboard is enough
    failed = page.locator("#jobs tbody tr", has_text="missing.wav")
    expect(failed.locator(".state")).to_have_text("failed")
    expect(failed.locator(".error")).to_contain_text("HTTP 404")


def test_several_submissions_in_a_row_and_cancel_a_slow_one(page: Page, http: FixtureHTTP,
                                                            stall: threading.Event) -> None:
    slow = stalled_audio(http, "slow.wav", stall)
    quick = http.add("/page/quick.wav", Fixture(body=encode(8000, 8000, "WAV", "PCM_16")))
    box = page.get_by_label("Audio file URL")
    for url in (slow, quick):
        box.fill(url)
        box.press("Enter")
    expect(page.locator("#jobs tbody tr", has_text="quick.wav").locator(".state")).to_have_text("done")
    row = page.locator("#jobs tbody tr", has_text="slow.wav")
    expect(row.locator(".state")).to_have_text("running")
    row.get_by_role("button", name=re.compile("Cancel")).click()
    expect(row.locator(".state")).to_have_text("cancelled")
    expect(row.get_by_role("button")).to_have_count(0)


def test_the_page_reconnects_and_shows_results_that_arrived_meanwhile(page: Page, http: FixtureHTTP,
                                                                      page_server: ServerThread,
                                                                      stall: threading.Event) -> None:
    url = stalled_audio(http, "during-outage.wav", stall)
    page.get_by_label("Audio file URL").fill(url)
    page.get_by_role("button", name="Measure").click()
    row = page.locator("#jobs tbody tr", has_text="during-outage.wav")
    expect(row.locator(".state")).to_have_text("running")

    services = page_server.app.state.services

    async def close_every_socket() -> None:
        for session in list(services.sessions):
            await session.websocket.close(1012, "restarting")

    asyncio.run_coroutine_threadsafe(close_every_socket(), page_server.server_loop()).result(10)
    expect(page.locator("#connection")).to_have_attribute("data-state", re.compile("closed|connecting"))
    stall.set()  # the job finishes while the page may be disconnected
    expect(page.locator("#connection")).to_have_text("Connected")
    expect(row.locator(".state")).to_have_text("done")
    expect(row.locator(".result")).to_contain_text("0:03.000")


def test_static_files_have_content_types_and_cache_headers(page_server: ServerThread) -> None:
    import requests

    for path, kind in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        response = requests.get(page_server.url + path, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
        assert response.headers["cache-control"] == "no-cache"


def test_echo_is_off_unless_enabled(page_server: ServerThread) -> None:
    from tests.helpers import Client, run

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with await Client.connect(page_server.ws_url) as client:
            await client.send({"op": "submit", "kind": "echo", "args": {}, "ref": "e"})
            refused = await client.recv()
            await client.send({"op": "kinds"})
            return refused, await client.recv()

    refused, kinds = run(scenario())
    from actors import all_kinds

    served = sorted(name for name, kind in all_kinds().items() if not kind.optional)
    assert refused["code"] == "unknown_kind" and ", ".join(served) in str(refused["message"])
    assert sorted(entry["kind"] for entry in kinds["kinds"]) == served


@pytest.mark.parametrize(("now", "expected"), [
    ("2024-03-26T19:00:00Z", "2024-03-22"),  # 20:00 in Paris: tonight's draw has no results yet
    ("2024-03-26T21:00:00Z", "2024-03-26"),  # 22:00 in Paris: it has
    ("2024-03-28T09:00:00Z", "2024-03-26"),
], ids=["draw-day-before-results", "draw-day-after-results", "two-days-later"])
def test_the_draw_picker_starts_at_the_latest_draw_with_results(browser: Browser, page_server: ServerThread,
                                                                now: str, expected: str) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.clock.install(time=now)
        page.goto(page_server.url + "/")
        expect(page.locator("#connection")).to_have_text("Connected")
        expect(page.get_by_label("Draw")).to_have_value(expected)
        expect(page.get_by_label("Month")).to_have_value(expected[:7])
        assert page.get_by_label("Month").get_attribute("max") == expected[:7]
    finally:
        context.close()


def test_a_queued_job_shows_its_place_in_the_queue(page: Page, http: FixtureHTTP, page_server: ServerThread,
                                                  stall: threading.Event) -> None:
    pool = page_server.app.state.services.dispatcher.pools["audio.length"]
    capacity, pool.capacity = pool.capacity, 1  # one job at a time: the next ones wait
    try:
        holding = stalled_audio(http, "holding.wav", stall)
        waiting = [http.add(f"/page/waiting-{n}.wav", Fixture(body=encode(8000, 8000, "WAV", "PCM_16")))
                   for n in range(2)]
        box = page.get_by_label("Audio file URL")
        for url in (holding, *waiting):
            box.fill(url)
            box.press("Enter")
        expect(row_for(page, "holding.wav").locator(".state")).to_have_text("running")
        expect(row_for(page, "waiting-0.wav").locator(".state")).to_have_text(re.compile(r"^queued \(next"))
        expect(row_for(page, "waiting-1.wav").locator(".state")).to_have_text(re.compile(r"^queued \(1 ahead"))
        stall.set()
        for name in ("waiting-0.wav", "waiting-1.wav"):
            expect(row_for(page, name).locator(".state")).to_have_text("done")
    finally:
        pool.capacity = capacity
