"""No single client exhausts the server: request deadlines, the per-address cap, the frame budget, strict
JSON both ways and a frame that raises. Real uvicorn on loopback with the fake pools (no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.abuse import UPGRADE  # the slowloris benchmark's request, trickled here too
from server.jobs import Job
from server.store import MemoryStore
from tests.helpers import ServerThread, run, wait_until
from tests.unit.fakes import FakeDispatcher, unit_client, unit_settings

DEADLINE = 1.0


class BrokenDispatcher(FakeDispatcher):
    """Fake pools with a bug: an `{"explode": true}` job raises where no refusal is expected."""

    def submit(self, job: Job) -> None:
        if job.args.get("explode"):
            raise RuntimeError("injected: a bug in the dispatcher")
        super().submit(job)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    settings = unit_settings(tmp_path_factory.mktemp("guard"), header_timeout=DEADLINE, max_connections_per_ip=4,
                             frames_per_s=20.0, trusted_proxies=("127.0.0.4",))
    with ServerThread(settings, store=MemoryStore(), make_dispatcher=BrokenDispatcher) as running:
        yield running


def connect_from(server: ServerThread, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it does not)."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def trickle_until_closed(sock: socket.socket, data: bytes, every: float = 0.1) -> tuple[int, bytes]:
    """Send `data` one byte at a time, each after waiting `every` s for the server to answer or close;
    how many bytes went out before it did, and what it said."""
    sock.settimeout(every)
    for sent, byte in enumerate(data):
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent, b""
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return sent + 1, b""
        return sent + 1, answer + read_until_closed(sock, 5)
    raise AssertionError("the server took the whole trickled request")


def refusals(server: ServerThread, reason: str) -> float:
    """The server's `ami_refusals_total` for one reason, as /metrics shows it."""
    return server.app.state.services.metrics.registry.get_sample_value("ami_refusals_total", {"reason": reason}) or 0


def test_a_silent_socket_is_closed_at_the_deadline(guarded: ServerThread) -> None:
    before = refusals(guarded, "deadline")
    with connect_from(guarded, "127.0.0.1") as sock:
        answer = read_until_closed(sock, DEADLINE + 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert refusals(guarded, "deadline") == before + 1


def test_an_upgrade_sent_byte_by_byte_is_closed_at_the_deadline(guarded: ServerThread) -> None:
    slow = UPGRADE * 20  # more than the deadline allows at 10 bytes a second
    with connect_from(guarded, "127.0.0.1") as sock:
        sent, answer = trickle_until_closed(sock, slow)
    assert sent < len(slow)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_trickled_rest_body_is_cut_at_the_deadline_without_a_traceback(
        guarded: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps({"kind": "echo", "args": {"pad": "x" * 200}}).encode()
    head = (f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with caplog.at_level(logging.DEBUG):
        with connect_from(guarded, "127.0.0.1") as sock:
            sock.sendall(head)
            sent, _ = trickle_until_closed(sock, body)
        assert sent < len(body)
        for _ in range(20):  # bodies given up by their clients half-way
            with connect_from(guarded, "127.0.0.1") as sock:
                sock.sendall(head + body[:10])
        assert wait_until(lambda: sum("before sending the whole body" in r.getMessage()
                                      for r in caplog.records) >= 21, 10)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


def test_a_complete_request_is_not_cut_and_a_kept_alive_connection_gets_a_fresh_deadline(
        guarded: ServerThread) -> None:
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(f"{guarded.url}/healthz", timeout=10).status_code == 200


def test_the_cap_refuses_one_address_while_another_gets_in(guarded: ServerThread) -> None:
    async def scenario() -> None:
        url = guarded.ws_url
        held = [await websockets.connect(url, local_addr=("127.0.0.2", 0)) for _ in range(4)]
        before = refusals(guarded, "too_many_connections")
        with pytest.raises((InvalidStatus, ConnectionClosed, OSError)) as refused:
            await websockets.connect(url, local_addr=("127.0.0.2", 0), open_timeout=10)
        assert refusals(guarded, "too_many_connections") == before + 1
        if isinstance(refused.value, InvalidStatus):
            assert refused.value.response.status_code == 429
        other = await websockets.connect(url, local_addr=("127.0.0.3", 0))
        await other.send("ping")
        assert json.loads(await asyncio.wait_for(other.recv(), 10))["type"] == "pong"
        await held.pop().close()
        guard = guarded.app.state.guard
        assert await asyncio.to_thread(wait_until, lambda: guard.open.get("127.0.0.2", 0) == 3, 10)
        held.append(await websockets.connect(url, local_addr=("127.0.0.2", 0)))  # room again
        for ws in [*held, other]:
            await ws.close()

    run(scenario())


def test_behind_a_trusted_proxy_the_forwarded_address_is_capped(guarded: ServerThread) -> None:
    def through(proxy: str, client: str) -> dict[str, Any]:
        return {"local_addr": (proxy, 0), "additional_headers": {"X-Forwarded-For": client}}

    async def scenario() -> None:
        url = guarded.ws_url
        # The trusted proxy itself is not capped: it carries many clients (five here, over the cap of four).
        held = [await websockets.connect(url, **through("127.0.0.4", "203.0.113.9")) for _ in range(4)]
        held.append(await websockets.connect(url, **through("127.0.0.4", "203.0.113.10")))
        with pytest.raises(InvalidStatus):  # the fifth of one forwarded client
            await websockets.connect(url, **through("127.0.0.4", "203.0.113.9"))
        # An untrusted peer's X-Forwarded-For is ignored: it is counted under its own address.
        spoofed = [await websockets.connect(url, **through("127.0.0.5", f"203.0.113.{n}")) for n in range(4)]
        with pytest.raises((InvalidStatus, ConnectionClosed, OSError)):
            await websockets.connect(url, **through("127.0.0.5", "203.0.113.99"), open_timeout=10)
        for ws in held + spoofed:
            await ws.close()

    run(scenario())


async def _pongs_and_limits(ws: Any, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]


def test_a_flooding_connection_is_rate_limited_then_closed(guarded: ServerThread) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], int | None]:
        async with websockets.connect(guarded.ws_url, max_queue=None) as ws:
            answers: list[dict[str, Any]] = []

            async def read() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        answers.append(json.loads(raw))

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()
            stop = loop.time() + 30
            n = 0
            with pytest.raises(ConnectionClosed):
                while loop.time() < stop:
                    await ws.send(json.dumps({"op": "ping", "ref": f"p{n}"}))
                    n += 1
                    if n % 50 == 0:
                        await asyncio.sleep(0)  # let the reader run
            await reader
            return answers, ws.close_code

    answers, code = run(scenario())
    limited = [frame for frame in answers if frame.get("code") == "rate_limited"]
    assert code == 4029
    assert refusals(guarded, "flooding") >= 1 and refusals(guarded, "rate_limited") >= len(limited)
    assert len([frame for frame in answers if frame["type"] == "pong"]) >= 100  # the burst was served
    assert limited and all(frame["retry_after_ms"] >= 1 and frame["ref"].startswith("p") for frame in limited)


def test_a_client_that_waits_retry_after_ms_is_never_closed(guarded: ServerThread) -> None:
    async def scenario() -> tuple[int, int]:
        async with websockets.connect(guarded.ws_url) as ws:
            for n in range(120):  # past the burst of 100
                await ws.send(json.dumps({"op": "ping", "ref": f"b{n}"}))
            answers = await _pongs_and_limits(ws, 120)
            limited = [frame for frame in answers if frame.get("code") == "rate_limited"]
            assert limited
            loop = asyncio.get_running_loop()
            stop = loop.time() + 7  # longer than the 5 s a flooder gets
            pongs = 0
            wait = limited[-1]["retry_after_ms"]
            while loop.time() < stop:
                await asyncio.sleep(wait / 1000)  # what rate_limited asks for
                await ws.send(json.dumps({"op": "ping"}))
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if answer["type"] == "pong":
                    pongs += 1
                    wait = 1000 / 20
                else:
                    wait = answer["retry_after_ms"]
            await ws.send("ping")
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] in ("pong", "error")
            return pongs, len(limited)

    pongs, limited = run(scenario())
    assert pongs >= 50 and limited >= 1


def test_non_finite_numbers_are_refused_on_the_socket_and_in_rest(tmp_path: Path) -> None:
    frames = ['{"op":"submit","kind":"echo","args":{"a":1e400},"ref":"big"}',
              '{"op":"submit","kind":"echo","args":{"b":NaN}}', '{"op":"submit","kind":"echo","args":{"c":-Infinity}}',
              '{"op":"ping","ref":"r","x":[1E999]}']
    with unit_client(unit_settings(tmp_path)) as client:
        with client.websocket_connect("/ws") as ws:
            for frame in frames:
                ws.send_text(frame)
                answer = ws.receive_json()
                assert (answer["type"], answer["code"]) == ("error", "bad_json"), answer
                assert "finite" in answer["message"]
            ws.send_text("ping")
            assert ws.receive_json()["type"] == "pong"
        for body in ('{"kind":"echo","args":{"a":NaN}}', '{"kind":"echo","args":{"a":1e400}}'):
            response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422 and response.json()["error"]["code"] == "bad_json"
        response = client.post("/euro/results", content='{"draw_date":"26-03-2024","callback":Infinity}',
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 422


@pytest.mark.parametrize("url", [
    "http://127].0.0.1:9/x.wav", "http://[::1/x.wav", "http://a:99999/x.wav", "http://a:0/x.wav",
    "http://a:-1/x.wav", "http://%zz/x.wav", "http://exa mple/x.wav", "http://\u00e9\u0301\u200d\ufffd..x/",
    "http://[v1.x]/x.wav", "http://a:b@[::1]:x/",
])
def test_malformed_urls_are_invalid_args_and_the_connection_stays(tmp_path: Path, url: str) -> None:
    with unit_client(unit_settings(tmp_path)) as client, client.websocket_connect("/ws") as ws:
        ws.send_json({"op": "submit", "kind": "audio.length", "args": {"url": url}, "ref": "u"})
        answer = ws.receive_json()
        assert (answer["type"], answer["code"], answer["ref"]) == ("error", "invalid_args", "u"), answer
        ws.send_text("ping")
        assert ws.receive_json()["type"] == "pong"


def test_a_frame_that_raises_answers_internal_and_the_connection_stays(
        guarded: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(guarded.ws_url) as ws:
            answers = []
            for ref in ("x1", "x2"):
                await ws.send(json.dumps({"op": "submit", "kind": "echo", "args": {"explode": True}, "ref": ref}))
                answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send("ping")
            answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return answers

    with caplog.at_level(logging.WARNING):
        first, second, pong = run(scenario())
    assert (first["code"], first["ref"], second["code"], second["ref"]) == ("internal", "x1", "internal", "x2")
    assert pong["type"] == "pong"
    assert len([record for record in caplog.records if record.exc_info]) == 1  # logged once per connection
