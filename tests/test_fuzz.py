"""Thousands of generated frames, valid, mutated, nested and escaped: every one answered, the server unharmed."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from actors import all_kinds
from server.errors import ErrorCode
from tests.helpers import Client, FixtureHTTP, ServerThread, settings_for

T = TypeVar("T")
FRAME_TYPES = {"accepted", "result", "error", "status", "kinds", "pong", "help"}
CLOSE_CODES = {1000, 1009, 4008}  # normal, a frame over the transport's size limit, a client that did not read
ERROR_CODES = {str(code) for code in ErrorCode}

any_text = st.text(st.characters(codec=None), max_size=20)  # lone surrogates included; JSON escapes them
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text  # NaN and Infinity too: bad_json
BAD_URLS = ["http://127].0.0.1:9/x.wav", "http://[::1/x", "http://[v1.x]/", "http://a:99999/", "http://a:0/",
            "http://a:-1/", "http://a:b/", "http://%zz/", "http://a%2/", "http://exa mple/", "http://\u00e9\u0301..x/",
            "http://xn--a-\ufffd/", "http://\x00/", "http://[::1%25eth0]/", "http:///x", "http://@/", "//a/b"]
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
                      max_leaves=12)
frame_objects = st.fixed_dictionaries(
    {"op": st.sampled_from(["submit", "cancel", "status", "watch", "kinds", "ping", "help", "nope"]) | values},
    optional={
        "kind": st.sampled_from([*sorted(all_kinds()), "nope"]) | values,
        "args": st.dictionaries(st.sampled_from(["url", "date", "x", "delay_ms"]) | any_text, values, max_size=3)
        | st.fixed_dictionaries({"url": st.sampled_from(BAD_URLS) | st.builds("http://{}/x".format, any_text)})
        | values,
        "ref": any_text | values,
        "job": any_text | values,
        "jobs": st.lists(any_text, max_size=5) | values,
        "seen": st.dictionaries(any_text, st.integers(), max_size=3) | values,
    },
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = json.dumps(draw(frame_objects))
    at = draw(st.integers(0, len(text)))
    cut = draw(st.integers(0, 8))
    return text[:at] + draw(st.text(max_size=4)) + text[at + cut:]


nested = st.builds(lambda depth, opener: opener * depth, st.integers(1, 30_000), st.sampled_from(["[", '{"a":']))
commands = st.builds(lambda word, rest: f"{word} {rest}", st.sampled_from(
    ["audio", "euro", "cancel", "status", "watch", "kinds", "ping", "help", "AUDIO", "x"]), st.text(max_size=30))
frames = st.lists(st.one_of(frame_objects.map(json.dumps), mutated(), nested, commands, st.text(max_size=40)),
                  min_size=1, max_size=12)


class LoopThread:
    """An event loop in a thread of its own, so one connection lives across hypothesis' examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Fuzzer:
    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.client: Client | None = None
        self.sent = 0
        self.closes: list[int] = []
        self.rss_before = psutil.Process().memory_info().rss  # the server runs in this process

    async def exchange(self, texts: list[str]) -> list[dict[str, Any]]:
        """Send the frames and a ping behind them; every frame that came back before the pong."""
        if self.client is None:
            self.client = await Client.connect(self.server.ws_url)
        sync = f"sync-{self.sent}"
        answers: list[dict[str, Any]] = []
        try:
            for text in texts:
                await self.client.send(text)
            await self.client.send({"op": "ping", "ref": sync})
            self.sent += len(texts)
            while (frame := await self.client.recv(timeout=30)) != {"type": "pong", "ref": sync}:
                answers.append(frame)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code in CLOSE_CODES, exc
            self.closes.append(exc.rcvd.code)
            self.client = None
        return answers


@pytest.fixture(scope="module")
def fuzz_server(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        ServerThread]:
    settings = settings_for(http, tmp_path_factory.mktemp("fuzz"), store="memory", frames_per_s=1e6,
                             pools=(("audio.length", 0), ("euro.results", 0), ("echo", 1)))
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def fuzzer(fuzz_server: ServerThread) -> Iterator[tuple[Fuzzer, LoopThread]]:
    loop = LoopThread()
    fuzzer = Fuzzer(fuzz_server)
    yield fuzzer, loop
    if fuzzer.client is not None:
        loop.run(fuzzer.client.close())
    loop.stop()


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(texts=frames)
def test_every_generated_frame_is_answered(fuzzer: tuple[Fuzzer, LoopThread], texts: list[str]) -> None:
    fuzz, loop = fuzzer
    for frame in loop.run(fuzz.exchange(texts)):
        assert frame["type"] in FRAME_TYPES, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES and frame["message"], frame


def test_after_the_fuzz_the_server_is_whole(fuzz_server: ServerThread, fuzzer: tuple[Fuzzer, LoopThread]) -> None:
    fuzz, loop = fuzzer
    assert fuzz.sent >= 1000, "thousands of frames were sent"

    async def normal_job() -> dict[str, Any]:
        async with await Client.connect(fuzz_server.ws_url) as client:
            job = await client.submit("echo", {"still": "works"})
            return await client.result(job)

    assert loop.run(normal_job())["result"] == {"still": "works"}
    services = fuzz_server.app.state.services
    assert all(job.remote or not job.finished for job in services.table.jobs.values())
    assert psutil.Process().memory_info().rss - fuzz.rss_before < 64 * 1024 * 1024, "memory came back"
