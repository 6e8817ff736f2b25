"""Two tenants on one kind: A submits ten times what the kind's actors can run, B submits a few jobs a second.
How long B's jobs wait to start (the server's `queued_ms`) and take in all (`elapsed_ms`, accepted to result),
with A idle and while A floods.

The kind is `audio.length` on one actor (16 job slots); A's files answer after 200 ms (a slow host: 80 jobs a
second fill the slots), B's at once, both from an HTTP server on loopback. Quotas are lifted for A, so what is
measured is the queue's fairness, not the quotas'.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import websockets

from bench.hostile import silent_wav
from bench.loadgen import percentile
from bench.servers import Process, server

SLOW_S = 0.2  # A's files take this long to answer
A_RATE = 800  # A's submissions a second: ten times what 16 slots of 200 ms jobs run
B_RATE = 4.0
TOKENS = "heavy:A-secret,light:B-secret"
LIFTED = {"AMI_FRAMES_PER_S": "1000000", "AMI_TENANT_SUBMITS_PER_S": "100000", "AMI_TENANT_MAX_UNFINISHED": "1000000",
          "AMI_MAX_PENDING": "1000000"}


def serve_files() -> None:
    """The files, served from this process until its standard input closes; prints the base URL."""
    body = silent_wav()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.startswith("/slow"):
                time.sleep(SLOW_S)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{httpd.server_address[1]}", flush=True)
    sys.stdin.read()
    httpd.shutdown()


@contextmanager
def files() -> Iterator[str]:
    """The file server in a process of its own: its threads must not share an interpreter with the clients."""
    process = Process([sys.executable, "-m", "bench.fairness", "files"])
    try:
        yield process.wait_for_line(lambda line: line.startswith("http://"), 60).strip()
    finally:
        assert process.popen.stdin is not None
        process.popen.stdin.close()
        process.stop()


Timing = tuple[float, float]  # a job's queued_ms (accepted to start) and elapsed_ms (accepted to result)


async def light(url: str, base: str, count: int) -> list[Timing]:
    """B: `count` jobs at B_RATE a second; the server's queued_ms and elapsed_ms of each."""
    out: list[Timing] = []
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer B-secret"}) as ws:
        async def read() -> None:
            while len(out) < count:
                frame = json.loads(await ws.recv())
                if frame["type"] == "result":
                    out.append((frame["queued_ms"], frame["elapsed_ms"]))
                elif frame["type"] == "error":
                    raise RuntimeError(f"B was refused: {frame}")

        reader = asyncio.create_task(read())
        for n in range(count):
            await ws.send(json.dumps({"op": "submit", "kind": "audio.length", "args": {"url": f"{base}/fast{n}.wav"}}))
            await asyncio.sleep(1 / B_RATE)
        await asyncio.wait_for(reader, 120)
    return out


async def heavy(url: str, base: str, stop: asyncio.Event) -> int:
    """A: submissions at A_RATE a second until `stop`; how many it sent."""
    sent = 0
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer A-secret"},
                                  max_queue=None) as ws:
        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        print("flooding", flush=True)
        started = time.perf_counter()
        while not stop.is_set():
            due = int((time.perf_counter() - started) * A_RATE)
            while sent < due:
                await ws.send(json.dumps({"op": "submit", "kind": "audio.length",
                                          "args": {"url": f"{base}/slow{sent}.wav"}}))
                sent += 1
            await asyncio.sleep(0.01)
        reader.cancel()
    return sent


async def heavy_for(url: str, base: str, seconds: float) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await heavy(url, base, stop)


async def episode(url: str, base: str, count: int) -> tuple[list[Timing], list[Timing], int]:
    """B alone, then B while A (a process of its own, as a real other client would be) floods."""
    alone = await light(url, base, count)
    flood = Process([sys.executable, "-m", "bench.fairness", "heavy", url, base, str(count / B_RATE + 4)])
    try:
        flood.wait_for_line(lambda line: line.startswith("flooding"), 60)
        await asyncio.sleep(2)  # A's backlog forms first
        during = await light(url, base, count)
        sent = int(flood.wait_for_line(lambda line: line.strip().isdigit(), 120))
    finally:
        flood.stop()
    return alone, during, sent


def measure(tmp: Path, quick: bool) -> dict[str, Any]:
    count = 20 if quick else 60
    with files() as base, server("--no-dashboard", "--allow-private-urls", "--data-dir", str(tmp / "fairness"),
                                 "--pools", "euro.results=0,audio.speech=0,audio.length=1", "--tokens", TOKENS,
                                 env=LIFTED) as running:
        asyncio.run(light(running.ws_url, base, 4))  # warm up
        alone, during, sent = asyncio.run(episode(running.ws_url, base, count))
    out: dict[str, Any] = {"A sent": sent, "jobs": count}
    for label, timings in (("alone", alone), ("flood", during)):
        for index, what in ((0, "wait"), (1, "total")):
            values = [timing[index] for timing in timings]
            out[f"{label} {what} p50"], out[f"{label} {what} p95"] = percentile(values, 0.5), percentile(values, 0.95)
    return out


def main() -> None:
    if sys.argv[1:2] == ["files"]:
        serve_files()
    elif sys.argv[1:2] == ["heavy"] and len(sys.argv) == 5:
        print(asyncio.run(heavy_for(sys.argv[2], sys.argv[3], float(sys.argv[4]))), flush=True)
    else:
        raise SystemExit("python -m bench.fairness files | heavy WS_URL FILES_URL SECONDS")


if __name__ == "__main__":
    main()
