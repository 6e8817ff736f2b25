"""audio.speech's figures: the real-time factor on one core over 10 minutes of speech and silence, the time to the
first `progress` frame through the product, and how much an actor's peak RSS grows measuring a 60-minute file.

    python -m bench.speech probe FILE     (in a child process: one core, the worker as an actor holds it)
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import websockets

from bench.servers import ROOT, server
from bench.speech_audio import repeated, speech

MiB = 1024 * 1024
PHRASES_SECONDS = 11.387  # the espeak-ng file that `speech` makes: three phrases and their silences


def files(workdir: Path, quick: bool) -> dict[str, Path]:
    """10 minutes of speech and silence (22,050 Hz, as espeak-ng speaks), and 60 minutes at 8 kHz (under the
    default 100 MiB download limit as a WAV, and resampled on the way)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path, _ = speech(workdir)
    ten = repeated(path, workdir, 6 if quick else 53)
    hour = workdir / ("hour-8k.wav" if not quick else "six-min-8k.wav")
    if not hour.exists():
        long = repeated(path, workdir, 32 if quick else 317)
        subprocess.run(["sox", str(long), "-r", "8000", str(hour)], check=True, capture_output=True, timeout=600)
    return {"ten": ten, "hour": hour}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def serve_directory(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def probe(path: Path) -> dict[str, Any]:
    """In this process, pinned to one core: a speech actor's worker (model loaded and warmed) measuring `path`
    served from loopback; the audio's length over the wall time, and the growth of the peak RSS over the warm
    worker's RSS."""
    from actors import WorkerConfig
    from actors.speech import SpeechSegments

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    worker = SpeechSegments(WorkerConfig(allow_private_urls=True, fetch_timeout=600, max_audio_bytes=200 * MiB))
    worker.warmup()
    httpd, base = serve_directory(path.parent)
    # The peak starts again from the current RSS (ru_maxrss would carry the parent's peak across exec).
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    started = time.perf_counter()
    steps = worker.run({"url": f"{base}/{path.name}"})
    first = None
    frames = 0
    try:
        while True:
            next(steps)
            frames += 1
            first = first or time.perf_counter() - started
    except StopIteration as returned:
        result = returned.value
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    httpd.shutdown()
    return {"duration": result["duration"], "seconds": seconds, "rtf": result["duration"] / seconds,
            "segments": len(result["segments"]), "progress frames": frames, "first progress s": first,
            "rss growth MiB": (peak - before) / MiB, "bytes": path.stat().st_size}


def _status(field: str) -> int:
    """A /proc/self/status figure, in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def probe_in_child(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bench.speech", "probe", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def _through_the_product(ws_url: str, url: str) -> dict[str, float]:
    async with websockets.connect(ws_url, max_size=None) as ws:
        sent = time.perf_counter()
        await ws.send(json.dumps({"op": "submit", "kind": "audio.speech", "args": {"url": url}, "ref": "s"}))
        marks: dict[str, float] = {}
        async for raw in ws:
            frame = json.loads(raw)
            now = (time.perf_counter() - sent) * 1000
            if frame["type"] == "accepted":
                marks["accepted ms"] = now
            elif frame["type"] == "progress" and "first progress ms" not in marks:
                marks["first progress ms"] = now
            elif frame["type"] == "result":
                marks["result ms"] = now
                marks["segments"] = len(frame["result"]["segments"])
                return marks
    raise RuntimeError("the socket closed before the result")


def measure(workdir: Path, quick: bool) -> dict[str, Any]:
    made = files(workdir, quick)
    out: dict[str, Any] = {"ten": probe_in_child(made["ten"]), "hour": probe_in_child(made["hour"])}
    httpd, base = serve_directory(made["ten"].parent)
    flags = ("--no-dashboard", "--allow-private-urls", "--store", "memory", "--data-dir", str(workdir / "data"),
             "--pools", "audio.length=0,audio.speech=1,euro.results=0")
    try:
        with server(*flags) as running:
            asyncio.run(_through_the_product(running.ws_url, f"{base}/{made['ten'].name}"))  # the actor warm
            out["product"] = asyncio.run(_through_the_product(running.ws_url, f"{base}/{made['ten'].name}"))
    finally:
        httpd.shutdown()
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        print(json.dumps(probe(Path(sys.argv[2]))))
