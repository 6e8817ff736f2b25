"""`python -m bench soak --minutes 10`: mixed jobs for the given time, half on the SQLite store, whose file is
deleted once (and the server restarted on a fresh one), half on Redis, whose server is killed once (and started
again, empty). Counts jobs accepted against jobs with a result, results that came twice, and audio files fetched
more than once (a job run twice to completion). Writes bench/SOAK.md, which BENCHMARKS.md includes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import websockets

from bench.hostile import silent_wav
from bench.servers import ServerProcess, free_port, listening

OUT = Path(__file__).with_name("SOAK.md")
RATE = 20.0  # jobs a second, mixed: echo with a random delay, and audio.length of a WAV served on loopback


class Tally:
    def __init__(self) -> None:
        self.accepted: set[str] = set()
        self.results: collections.Counter[str] = collections.Counter()
        self.failed: collections.Counter[str] = collections.Counter()  # by error code
        self.refused: collections.Counter[str] = collections.Counter()  # by error code
        self.fetched: collections.Counter[str] = collections.Counter()  # audio path -> GETs served
        self.numbers = itertools.count()  # every job's own number, across phases: each audio job its own URL


@contextlib.contextmanager
def audio_server(tally: Tally) -> Iterator[str]:
    body = silent_wav()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            tally.fetched[self.path] += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a download cut off by a server stopping mid-job: expected here

    httpd = Quiet(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


async def client(url: str, base: str, until: float, tally: Tally, stop: asyncio.Event) -> None:
    """Submit at RATE until `until`; on a dropped connection, connect again and watch what is still owed."""
    while True:
        try:
            async with websockets.connect(url, max_size=None, open_timeout=5) as ws:
                owed = sorted(tally.accepted - set(tally.results))
                for start in range(0, len(owed), 1000):
                    await ws.send(json.dumps({"op": "watch", "jobs": owed[start:start + 1000]}))

                async def read() -> None:
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["type"] == "accepted":
                            tally.accepted.add(frame["job"])
                        elif frame["type"] == "result":
                            tally.results[frame["job"]] += 1
                            if frame["status"] != "succeeded":
                                tally.failed[frame.get("error", {}).get("code", frame["status"])] += 1
                        elif frame["type"] == "error" and frame["code"] != "not_found":
                            tally.refused[frame["code"]] += 1

                reader = asyncio.create_task(read())
                while time.monotonic() < until and not reader.done():
                    n = next(tally.numbers)
                    if n % 2:
                        job = {"op": "submit", "kind": "echo", "args": {"n": n, "delay_ms": random.randint(0, 300)}}
                    else:
                        job = {"op": "submit", "kind": "audio.length", "args": {"url": f"{base}/{n}.wav"}}
                    await ws.send(json.dumps(job))
                    await asyncio.sleep(1 / RATE)
                while not reader.done() and not (tally.accepted <= set(tally.results)) and not stop.is_set():
                    await asyncio.wait([reader], timeout=0.5)
                reader.cancel()
                return
        except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, TimeoutError):
            await asyncio.sleep(0.5)  # the server is restarting: connect again


def start_server(flags: list[str]) -> ServerProcess:
    process = ServerProcess(*flags)
    process.wait_listening()
    return process


def sqlite_phase(tmp: Path, base: str, seconds: float, tally: Tally) -> None:
    data = tmp / "sqlite"
    flags = ["--enable-echo", "--no-dashboard", "--allow-private-urls", "--pools", "euro.results=0,audio.speech=0",
             "--data-dir", str(data)]
    servers = [start_server(flags)]
    port = servers[0].port

    async def run() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(client(servers[0].ws_url, base, time.monotonic() + seconds, tally, stop))
        await asyncio.sleep(seconds / 2)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{data / 'jobs.sqlite3'}{suffix}").unlink(missing_ok=True)  # an operator's mistake
        await asyncio.sleep(20)  # the server says so; results it could not save are reported failed
        await asyncio.to_thread(servers[-1].stop)
        servers.append(await asyncio.to_thread(start_server, [*flags, "--port", str(port)]))  # a fresh file
        await load
        stop.set()

    try:
        asyncio.run(run())
    finally:
        servers[-1].stop()


def redis_phase(tmp: Path, base: str, seconds: float, tally: Tally) -> None:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"

    def start_redis() -> subprocess.Popen[bytes]:
        popen = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                  "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not listening("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return popen

    redis_process = start_redis()
    server = start_server(["--enable-echo", "--no-dashboard", "--allow-private-urls",
                           "--pools", "euro.results=0,audio.speech=0", "--data-dir", str(tmp / "redis"), "--store", f"redis://127.0.0.1:{port}/0"])

    async def run() -> None:
        nonlocal redis_process
        stop = asyncio.Event()
        load = asyncio.create_task(client(server.ws_url, base, time.monotonic() + seconds, tally, stop))
        await asyncio.sleep(seconds / 2)
        redis_process.send_signal(signal.SIGKILL)  # the store's machine dies
        await asyncio.to_thread(redis_process.wait, 30)
        await asyncio.sleep(5)
        redis_process = await asyncio.to_thread(start_redis)  # back, empty
        await load
        stop.set()

    try:
        asyncio.run(run())
    finally:
        server.stop()
        redis_process.send_signal(signal.SIGTERM)
        redis_process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    options = parser.parse_args(sys.argv[2:] if sys.argv[1:2] == ["soak"] else sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="ami-soak-"))
    tally = Tally()
    half = options.minutes * 30
    try:
        with audio_server(tally) as base:
            sqlite_phase(tmp, base, half, tally)
            redis_phase(tmp, base, half, tally)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    missing = tally.accepted - set(tally.results)
    twice = [job for job, count in tally.results.items() if count > 1]
    refetched = [path for path, count in tally.fetched.items() if count > 1]
    lines = ["## Soak", "", f"Written by `python -m bench soak --minutes {options.minutes:g}` on "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}: {RATE:g} mixed jobs a second (echo with a random delay, "
             "`audio.length` of a WAV on loopback), half the time on the SQLite store, whose file is deleted once "
             "(then the server restarted on a fresh one), half on Redis, whose server is killed once (and started "
             "again, empty, 5 s later).", "",
             f"- jobs accepted: {len(tally.accepted):,}; with a result: {len(tally.accepted) - len(missing):,}; "
             f"accepted without a result: {len(missing)}",
             f"- results that came twice: {len(twice)}; audio files fetched more than once (a job run twice): "
             f"{len(refetched)}",
             f"- failed results: {dict(tally.failed) or 'none'} (jobs whose result could not be saved while the "
             "store was gone are reported `internal`); submissions refused: "
             f"{dict(tally.refused) or 'none'}"]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {OUT}")
    sys.exit(0 if not missing and not twice and not refetched else 1)
