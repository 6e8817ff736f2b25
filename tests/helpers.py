"""Real servers for the tests: uvicorn in a thread, HTTP fixtures on loopback, a WebSocket client."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import uvicorn
import websockets
import yaml
from websockets.asyncio.client import ClientConnection

from actors import all_kinds
from bench.servers import ROOT
from server.app import create_app, uvicorn_options
from server.config import Settings
from server.services import DispatcherFactory
from server.store import Store

T = TypeVar("T")
TIMEOUT = 60.0
ASYNCAPI = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
SERVER_FRAME = jsonschema.Draft7Validator({**ASYNCAPI, "$ref": "#/components/schemas/ServerFrame"})


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    """Whether `condition` came true within `timeout` seconds (checked every 20 ms; no sleep decides a test)."""
    expired = threading.Event()
    timer = threading.Timer(timeout, expired.set)
    timer.start()
    try:
        while not condition() and not expired.wait(0.02):
            pass
        return bool(condition())
    finally:
        timer.cancel()


def server_frame_errors(frame: dict[str, Any]) -> list[str]:
    """Why `frame` is not a server frame as docs/asyncapi.yaml describes them (empty when it is)."""
    return [error.message for error in SERVER_FRAME.iter_errors(frame)]


def run(coro: Awaitable[T], timeout: float = TIMEOUT) -> T:
    """Run a coroutine to completion in a fresh event loop, failing after `timeout` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    with ThreadPoolExecutor(1) as thread:  # a loop runs here already (Playwright's): use a thread of our own
        return thread.submit(asyncio.run, bounded()).result()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.up.set()


class ServerThread:
    """The real app on real uvicorn on a free loopback port, in a background thread."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 make_dispatcher: DispatcherFactory | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.settings = settings.replace(port=self.port, namespace=f"test-{uuid.uuid4().hex[:8]}")
        self.app = create_app(self.settings, store, make_dispatcher)
        options = uvicorn_options(self.settings, self.app)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", **options)
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        if not self.server.up.wait(120):
            raise RuntimeError("server did not start within 120 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
        assert not self.thread.is_alive(), "server thread did not stop"

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until every actor has started and warmed up."""
        services = self.app.state.services
        future = asyncio.run_coroutine_threadsafe(services.dispatcher.ready(), self.server_loop())
        future.result(timeout)

    def server_loop(self) -> asyncio.AbstractEventLoop:
        assert self.server.loop is not None, "the server has not started"
        return self.server.loop


class Client:
    """A WebSocket client speaking protocol v1, with reads that time out instead of hanging."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.unread: list[dict[str, Any]] = []  # frames read past by recv_until, oldest first

    @classmethod
    async def connect(cls, url: str) -> Client:
        return cls(await websockets.connect(url, max_size=None))

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        if self.unread:
            return self.unread.pop(0)
        return await self._read(timeout)

    async def _read(self, timeout: float) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str)
        assert "\n" not in raw, "server frames are one line"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and "type" in frame
        assert server_frame_errors(frame) == [], f"not a frame of docs/asyncapi.yaml: {raw}"
        return frame

    async def recv_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first frame that matches; the frames read past stay for later `recv` calls."""
        for index, frame in enumerate(self.unread):
            if predicate(frame):
                return self.unread.pop(index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self._read(max(0.01, deadline - loop.time()))
            if predicate(frame):
                return frame
            self.unread.append(frame)

    async def submit(self, kind: str, args: dict[str, Any], ref: str | None = None) -> str:
        frame: dict[str, Any] = {"op": "submit", "kind": kind, "args": args}
        if ref is not None:
            frame["ref"] = ref
        await self.send(frame)
        answer = await self.recv_until(lambda f: f.get("type") in ("accepted", "error") and f.get("ref") == ref)
        assert answer["type"] == "accepted", answer
        return str(answer["job"])

    async def result(self, job: str, timeout: float = 60) -> dict[str, Any]:
        return await self.recv_until(lambda f: f["type"] == "result" and f["job"] == job, timeout)


Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Fixture:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-request (a cancelled or timed-out download) is expected here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FixtureHTTP:
    """An HTTP server on 127.0.0.1 serving what the tests put in it (with Range support)."""

    def __init__(self) -> None:
        self.routes: dict[str, Fixture | Handler] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        routes, requests = self.routes, self.requests

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait 40 ms for a delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                requests.append((self.path, dict(self.headers)))
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self._send(404, b"<html><body>Not found</body></html>", {"Content-Type": "text/html"})
                elif callable(route):
                    route(self)
                else:
                    self._serve(route)

            def _serve(self, fixture: Fixture) -> None:
                body, status, headers = fixture.body, fixture.status, dict(fixture.headers)
                wanted = self.headers.get("Range", "")
                if fixture.ranges and status == 200 and body:
                    headers["Accept-Ranges"] = "bytes"
                    if wanted.startswith("bytes="):
                        start_text, _, end_text = wanted[6:].partition("-")
                        start = int(start_text or 0)
                        end = min(int(end_text) if end_text else len(body) - 1, len(body) - 1)
                        headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                        body, status = body[start:end + 1], 206
                self._send(status, body, headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _QuietHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, route: Fixture | Handler) -> str:
        self.routes[path] = route
        return self.url(path)

    def __enter__(self) -> FixtureHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def settings_for(http: FixtureHTTP, data_dir: Path, **changes: object) -> Settings:
    """Settings for a test server: every kind (echo too), private URLs allowed, the euro site on loopback. A test
    that names its pools gets no actors of a kind it does not name."""
    base = Settings(
        data_dir=data_dir,
        enable_echo=True,
        allow_private_urls=True,
        euro_url=http.url("/euro/"),
        pools=tuple((name, 2 if name == "echo" else 1) for name in sorted(all_kinds())),
        actor_cpus=0.1,
        fetch_timeout=5.0,
        dashboard=False,
    )
    settings = base.replace(**changes)
    named = {pool[0] for pool in settings.pools}
    return settings.replace(pools=(*settings.pools, *((name, 0) for name in sorted(all_kinds()) if name not in named)))
