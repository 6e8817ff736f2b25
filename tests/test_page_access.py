"""Access control as a browser meets it: another site's page is refused; a token is asked for once, kept out of URLs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.audio_files import encode
from tests.helpers import Fixture, FixtureHTTP, ServerThread, settings_for
from tests.test_page import browser

__all__ = ["browser"]

ATTACK = """<!doctype html><html><body><script>
window.outcome = {};
const server = "%(server)s";
const socket = new WebSocket(server.replace("http", "ws") + "/ws");
socket.onopen = () => { window.outcome.socket = "open"; };
socket.onerror = () => { window.outcome.socket = "refused"; };
const post = (path, body) => fetch(server + path, {method: "POST", mode: "no-cors", body: JSON.stringify(body),
                                                   headers: {"Content-Type": "text/plain"}});
Promise.all([post("/jobs", {kind: "echo", args: {mark: "%(mark)s"}}),
             post("/audio/length", {audio_url: "http://127.0.0.1:9/%(mark)s.wav"})])
  .then(() => { window.outcome.rest = "answered"; }, () => { window.outcome.rest = "failed"; });
</script></body></html>"""


@pytest.fixture(scope="module")
def open_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    """The default configuration, the one a cross-site attack has the best chance against: no tokens."""
    settings = settings_for(http, tmp_path_factory.mktemp("browser-open"), store="memory",
                             pools=(("audio.length", 1), ("euro.results", 0), ("echo", 1)))
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def token_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("browser-token"), tokens=("page-s3cret",),
                             pools=(("audio.length", 1), ("euro.results", 0), ("echo", 0)))
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


def jobs_marked(server: ServerThread, mark: str) -> list[dict[str, Any]]:
    """Every job this server made whose args carry `mark`, running or finished (memory store)."""
    services = server.app.state.services
    records = [{"args": job.args} for job in services.table.jobs.values()] + list(services.store._finished.values())
    return [record for record in records if mark in json.dumps(record["args"])]


def attack(page: Page, http: FixtureHTTP, server: ServerThread, mark: str, served_from: str | None = None) -> None:
    """Open a page with the attack script: on another loopback port, or (the control) on the server itself."""
    script = ATTACK % {"server": server.url, "mark": mark}
    if served_from is None:
        page.goto(http.add(f"/attack/{mark}.html", Fixture(body=script.encode(), headers={
            "Content-Type": "text/html"})))
    else:
        page.goto(served_from)
        page.set_content(script)
    page.wait_for_function("window.outcome && window.outcome.socket && window.outcome.rest", timeout=30_000)


def test_another_sites_page_can_use_neither_the_socket_nor_rest(browser: Browser, http: FixtureHTTP,
                                                              open_server: ServerThread) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        attack(page, http, open_server, "csrf-foreign")
        assert page.evaluate("window.outcome") == {"socket": "refused", "rest": "answered"}
        assert jobs_marked(open_server, "csrf-foreign") == [], "the server made no job for another site's page"
        # The control: the very same script from the server's own origin is served, so the refusal above is real.
        attack(page, http, open_server, "csrf-own", served_from=open_server.url + "/")
        assert page.evaluate("window.outcome.socket") == "open"
        assert len(jobs_marked(open_server, "csrf-own")) == 2
    finally:
        context.close()


def test_the_page_asks_for_a_token_once_and_keeps_it_out_of_the_url(browser: Browser, http: FixtureHTTP,
                                                                   token_server: ServerThread) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(token_server.url + "/")
        expect(page.get_by_label("Access token")).to_be_visible()
        expect(page.locator("#connection")).to_have_text("This server needs a token")
        page.get_by_label("Access token").fill("not-it")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#token-message")).to_have_text("That token was refused.")
        page.get_by_label("Access token").fill("page-s3cret")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#connection")).to_have_text("Connected")
        expect(page.locator("#token-form")).to_be_hidden()

        url = http.add("/page-access/one.wav", Fixture(body=encode(8000, 8000, "WAV", "PCM_16")))
        page.get_by_label("Audio file URL").fill(url)
        page.get_by_role("button", name="Measure").click()
        expect(page.locator("#jobs tbody tr", has_text="one.wav").locator(".state")).to_have_text("done")

        page.reload()  # the tab keeps the token: no second question
        expect(page.locator("#connection")).to_have_text("Connected")
        expect(page.locator("#token-form")).to_be_hidden()
        assert "s3cret" not in page.url
        assert page.evaluate("sessionStorage.getItem('ami.token')") == "page-s3cret"
        assert "s3cret" not in page.evaluate("JSON.stringify(localStorage)")

        page.goto(token_server.url + "/?token=page-s3cret")  # an old bookmark still works, and loses the token
        expect(page.locator("#connection")).to_have_text("Connected")
        expect(page).to_have_url(re.compile(r"/$"))
    finally:
        context.close()
