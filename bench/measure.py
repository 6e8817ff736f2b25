"""The measurements of `make bench`: loads against the product, raw Ray and Ray Serve, push against polling,
idle connections, a client that never reads, audio, cold start. Each returns figures; it writes nothing."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import websockets

import ami
from bench.hostile import measure_in_child, silent_mp3
from bench.loadgen import LoadResult, percentile, run_load
from bench.servers import free_port, minimal_app, server

ECHO_ONLY = ("--enable-echo", "--no-dashboard", "--pools", "audio.length=0,audio.speech=0,euro.results=0")
MiB = 1024 * 1024
# The load generator is one heavy client the operator trusts: the default frame budget (AMI_FRAMES_PER_S, 200 a
# second per connection) and its tenant's quotas (one address: 100 submissions a second, 1,000 unfinished) would
# cap it far below what the server can do, so the throughput runs lift them.
TRUSTED_LOAD = {"AMI_FRAMES_PER_S": "1000000", "AMI_TENANT_SUBMITS_PER_S": "1000000",
                "AMI_TENANT_MAX_UNFINISHED": "1000000"}


@dataclass
class Held:
    """Sockets opened and held: how many, server RSS per socket, how many answered a ping, failed opens."""

    asked: int
    held: int
    per_bytes: float
    answering: int
    errors: int

    def __str__(self) -> str:
        return (f"{self.held:,} of {self.asked:,} held, {self.per_bytes / 1024:.1f} KiB each, "
                f"{self.answering:,} answering, {self.errors} failed to open")


@dataclass
class Figure:
    rate: float
    p50: float
    p99: float

    @classmethod
    def median_of(cls, results: list[LoadResult]) -> Figure:
        return cls(statistics.median(r.rate for r in results), statistics.median(r.p50 for r in results),
                   statistics.median(r.p99 for r in results))

    def cells(self) -> str:
        return f"{self.rate:,.0f} | {self.p50:.2f} | {self.p99:.2f}"


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.runs = 1 if quick else 3
        self.tmp = Path(tempfile.mkdtemp(prefix="ami-bench-"))
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        print(text, flush=True)

    # --- loads -------------------------------------------------------------------------------------

    def shapes(self) -> list[tuple[str, int, int, int]]:
        """(label, connections, in flight each, jobs per connection)"""
        if self.quick:
            return [("1 x 1", 1, 1, 200), ("1 x 64", 1, 64, 500), ("32 x 64", 32, 64, 30)]
        return [("1 x 1", 1, 1, 1000), ("1 x 64", 1, 64, 4000), ("32 x 64", 32, 64, 150)]

    def measure(self, url: str, connections: int, in_flight: int, jobs: int, kind: str = "echo",
                args: dict[str, Any] | None = None) -> Figure:
        asyncio.run(run_load(url, 1, 8, 200, kind, args))  # warm up
        results = []
        for _ in range(self.runs):
            result = asyncio.run(run_load(url, connections, in_flight, jobs, kind, args))
            self.log(f"    {result.summary()}")
            results.append(result)
        return Figure.median_of(results)

    def product(self, store: str, batch: bool = True) -> dict[str, Figure]:
        figures = {}
        with server(*ECHO_ONLY, "--store", store, "--data-dir", str(self.tmp / store.replace("/", "_")),
                    *(() if batch else ("--no-batch",)), env=TRUSTED_LOAD) as running:
            for label, connections, in_flight, jobs in self.shapes():
                self.log(f"  product, store {store}, {label}")
                figures[label] = self.measure(running.ws_url, connections, in_flight, jobs)
        return figures

    def raw_ray(self) -> dict[str, Figure]:
        """Per load shape, the best raw driver at that window; then every actor and driver at windows of 64, 256
        and 2,048 calls in flight (bench/raw.py): the strongest baseline this machine gives."""
        import ray

        from bench import raw

        made = raw.actors()
        figures: dict[str, Figure] = {}

        def median(actor: Any, driver: Any, window: int, total: int) -> Figure:
            driver(actor, 8, 200)  # warm up
            return Figure.median_of([driver(actor, window, total) for _ in range(self.runs)])

        for label, connections, in_flight, jobs in self.shapes():
            tried = {f"{name}, {how}": median(actor, driver, connections * in_flight, connections * jobs)
                     for name, actor in made.items() for how, driver in raw.DRIVERS.items()}
            best = max(tried, key=lambda key: tried[key].rate)
            self.log(f"  raw Ray, {label}: best {best}, " + ", ".join(f"{key} {figure.rate:,.0f}/s"
                                                                      for key, figure in tried.items()))
            figures[label] = tried[best]
        total = 2000 if self.quick else 8000
        for window in raw.WINDOWS:
            for name, actor in made.items():
                for how, driver in raw.DRIVERS.items():
                    figure = median(actor, driver, window, total)
                    figures[f"window {window}, {name}, {how}"] = figure
                    self.log(f"  raw Ray, {name}, {how}, {window} in flight: {figure.rate:,.0f} calls/s")
        for actor in made.values():
            ray.kill(actor)
        return figures

    def ray_serve(self) -> dict[str, Figure]:
        from ray import serve

        from bench.serve_app import application

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(), route_prefix="/", name="bench")
        figures = {}
        for label, connections, in_flight, jobs in self.shapes():
            self.log(f"  Ray Serve, {label}")
            figures[label] = self.measure(f"ws://127.0.0.1:{port}/ws", connections, in_flight, jobs)
        serve.shutdown()
        return figures

    # --- push against polling --------------------------------------------------------------------

    def push_and_poll(self) -> dict[str, list[float]]:
        """How long after a job finished (its `finished_at`, read back over REST) the client knew."""
        import datetime as dt

        import aiohttp

        count = 10 if self.quick else 60
        out: dict[str, list[float]] = {}
        with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "poll")) as running:
            async def finished_at(http: aiohttp.ClientSession, job: str) -> float:
                async with http.get(f"{running.url}/jobs/{job}") as answer:
                    return dt.datetime.fromisoformat((await answer.json())["finished_at"]).timestamp()

            async def push() -> list[float]:
                known: dict[str, float] = {}
                async with websockets.connect(running.ws_url) as ws, aiohttp.ClientSession() as http:
                    for index in range(count):  # staggered, so that jobs finish one at a time
                        await ws.send(json.dumps({"op": "submit", "kind": "echo",
                                                  "args": {"delay_ms": 300 + 37 * index}}))
                    while len(known) < count:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "result":
                            known[frame["job"]] = time.time()
                    return [(known[job] - await finished_at(http, job)) * 1000 for job in known]

            async def poll(interval: float) -> list[float]:
                async with aiohttp.ClientSession() as http:
                    async def one(index: int) -> float:
                        async with http.post(f"{running.url}/jobs", json={
                                "kind": "echo", "args": {"delay_ms": 300 + 37 * index}}) as made:
                            job = (await made.json())["job"]
                        while True:
                            await asyncio.sleep(interval)
                            async with http.get(f"{running.url}/task/{job}") as answer:
                                if answer.status == 200:
                                    known = time.time()
                                    return (known - await finished_at(http, job)) * 1000

                    return list(await asyncio.gather(*(one(index) for index in range(count))))

            asyncio.run(push())  # warm up
            out["push (WebSocket)"] = asyncio.run(push())
            out["polling GET /task every 1 s (the old client)"] = asyncio.run(poll(1.0))
            out["polling GET /task every 50 ms"] = asyncio.run(poll(0.05))
            for name, delays in out.items():
                self.log(f"  {name}: p50 {statistics.median(delays):.2f} ms, max {max(delays):.2f} ms")
        return out

    # --- connections ------------------------------------------------------------------------------

    def connections(self) -> dict[str, Held]:
        """Idle sockets: server memory per connection (with and without permessage-deflate negotiated), as
        many as the file limit allows, all answering, and a burst opened at once."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the client ends
        many, most = (2000, 3000) if self.quick else (10_000, 18_000)
        plans = [  # label, count, batch, compression, server environment
            (f"{many:,} idle", many, 250, None, {}),
            (f"{many:,} idle, clients asking for deflate (as browsers do)", many, 250, "deflate", {}),
            (f"{many:,} idle, deflate negotiated (AMI_WS_DEFLATE=1, opt-in)", many, 250, "deflate",
             {"AMI_WS_DEFLATE": "1"}),
            (f"{most:,} idle (file limit {hard:,})", most, 250, None, {}),
            (f"{many:,} opened at once", many, many, None, {}),
        ]
        out = {}
        for label, count, batch, compression, env in plans:
            # Every socket here comes from 127.0.0.1: the per-address cap (1,000) is lifted to measure the server.
            with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "conns"),
                        env={"AMI_MAX_CONNECTIONS_PER_IP": "1000000", **env}) as running:
                out[label] = asyncio.run(self._hold(running, count, batch, compression))
                self.log(f"  {label}: {out[label]}")
        for ws in ("websockets-sansio", "websockets"):  # the same sockets on the smallest app, same machine, same run
            label = f"{many:,} idle, a minimal Starlette app (uvicorn --ws {ws})"
            with minimal_app(ws) as running:
                out[label] = asyncio.run(self._hold(running, many, 250, None))
            self.log(f"  {label}: {out[label]}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return out

    @staticmethod
    async def _hold(running: Any, count: int, batch: int, compression: str | None) -> Held:
        async with websockets.connect(running.ws_url) as probe:
            await probe.send("ping")
            await probe.recv()
        before = running.rss()
        sockets: list[Any] = []
        errors = 0
        for start in range(0, count, batch):
            opened = await asyncio.gather(*(
                websockets.connect(running.ws_url, ping_interval=None, compression=compression, open_timeout=60)
                for _ in range(start, min(count, start + batch))), return_exceptions=True)
            sockets.extend(s for s in opened if not isinstance(s, BaseException))
            errors += sum(isinstance(s, BaseException) for s in opened)
        await asyncio.sleep(2)  # let the server settle before reading its memory
        after = running.rss()
        await asyncio.gather(*(s.send("ping") for s in sockets), return_exceptions=True)
        answers = await asyncio.gather(*(asyncio.wait_for(s.recv(), 60) for s in sockets), return_exceptions=True)
        alive = sum(isinstance(a, str) and "pong" in a for a in answers)
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        return Held(count, len(sockets), (after - before) / max(1, len(sockets)), alive, errors)

    # --- a client that never reads --------------------------------------------------------------

    def slow_reader(self) -> dict[str, float]:
        """A client that asks for megabytes with `watch` and reads nothing: how much the server grows
        before it cuts the client off (4008), and how fast another client's ping is answered meanwhile."""
        from bench.silent import SilentClient

        out: dict[str, float] = {}
        with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "slow")) as running:
            async def prepare() -> list[str]:
                jobs = []
                async with websockets.connect(running.ws_url, max_size=None) as ws:
                    for n in range(60):
                        args = {"n": n, "pad": "z" * 60_000}
                        await ws.send(json.dumps({"op": "submit", "kind": "echo", "args": args}))
                        while (frame := json.loads(await ws.recv()))["type"] != "result":
                            pass
                        jobs.append(frame["job"])
                    for _ in range(3):  # a client that reads watches them too: the store's read cache fills
                        await ws.send(json.dumps({"op": "watch", "jobs": jobs}))
                        for _ in jobs:
                            await ws.recv()
                return jobs

            async def episode(jobs: list[str]) -> tuple[list[float], int]:
                peak = running.rss()
                pings: list[float] = []
                silent = SilentClient(running.ws_url)
                for _ in range(20):  # 20 x 60 results of 60 KB: 72 MB asked for
                    silent.send(json.dumps({"op": "watch", "jobs": jobs}))
                async with websockets.connect(running.ws_url) as probe:
                    ended = time.perf_counter() + 12  # past the 5 s a watch waits for the client to read
                    while time.perf_counter() < ended:
                        started = time.perf_counter()
                        await probe.send("ping")
                        await probe.recv()
                        pings.append((time.perf_counter() - started) * 1000)
                        peak = max(peak, running.rss())
                        await asyncio.sleep(0.01)
                _, close = await asyncio.to_thread(silent.read_until_closed)
                silent.close()
                out["close code"] = close.code if close is not None else 0
                return pings, peak

            jobs = asyncio.run(prepare())
            before = running.rss()
            pings, peak = asyncio.run(episode(jobs))
            out["rss growth MiB"] = (peak - before) / MiB
            out["limit MiB"] = 1.0
            out["ping p50 ms"] = statistics.median(pings)
            out["ping p99 ms"] = sorted(pings)[int(0.99 * (len(pings) - 1))]
            self.log(f"  never-reading client: {out}")
        return out

    # --- clients that misbehave -----------------------------------------------------------------

    def flood(self) -> dict[str, Any]:
        """Another client's ping and echo round trips alone, then while one socket floods frames for 10 s."""
        from bench.abuse import probe
        from bench.servers import Process

        seconds = 5.0 if self.quick else 10.0
        out: dict[str, Any] = {}
        with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "flood")) as running:
            asyncio.run(probe(running.ws_url, 1.0))  # warm up
            out["alone"] = asyncio.run(probe(running.ws_url, seconds)).figures()
            flooder = Process([sys.executable, "-m", "bench.abuse", "flood", running.ws_url, str(seconds + 1)])
            try:
                flooder.wait_for_line(lambda line: line.startswith("flooding"), 60)
                out["flood"] = asyncio.run(probe(running.ws_url, seconds)).figures()
                out["flooder"] = json.loads(flooder.wait_for_line(lambda line: line.startswith("{"), 60))
            finally:
                flooder.stop()
            self.log(f"  flood: {out}")
        return out

    def slowloris(self) -> dict[str, Any]:
        """2,000 sockets sending an upgrade one byte every 10 s: how many are left after 15 s, and a normal client's
        time from connect to its first pong meanwhile (from another address). Spread over four addresses (under
        the per-address cap, so the deadline must end them), then from one (the cap refuses half at once)."""
        from bench.abuse import slowloris_episode

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the attacker's ends
        count, hold = 2000, 15.0
        out: dict[str, Any] = {}
        for label, sources in (("from 4 addresses", [f"127.0.0.{n}" for n in range(10, 14)]),
                               ("from 1 address", ["127.0.0.10"])):
            with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "slowloris")) as running:
                figures, times = asyncio.run(slowloris_episode(running.ws_url, count, sources, hold))
                figures["connect p50"] = percentile(times, 0.5)
                figures["connect max"] = max(times)
                out[label] = figures
                self.log(f"  slowloris {label}: {figures}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return out

    def fairness(self) -> dict[str, Any]:
        """Tenant B's jobs with tenant A idle, then while A submits ten times what the kind can run."""
        from bench.fairness import measure

        out = measure(self.tmp, self.quick)
        self.log(f"  fairness: {out}")
        return out

    # --- audio -----------------------------------------------------------------------------------

    def audio(self) -> dict[str, Any]:
        import librosa

        from actors import WorkerConfig
        from actors.audio import AudioLength, measure

        def wav(seconds: float, rate: int, channels: int) -> bytes:
            buffer = io.BytesIO()
            noise = np.random.default_rng(1).integers(-3000, 3000, (int(seconds * rate), channels), dtype="int16")
            soundfile.write(buffer, noise, rate, format="WAV", subtype="PCM_16")
            return buffer.getvalue()

        def timed(work: Callable[[], object], repeat: int) -> float:
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                work()
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)

        files = {"60 s, 44.1 kHz stereo WAV": wav(60, 44100, 2), "1 s, 8 kHz mono WAV": wav(1, 8000, 1)}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait 40 ms for a delayed ACK

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = files["60 s, 44.1 kHz stereo WAV"] if "big" in self.path else files["1 s, 8 kHz mono WAV"]
                wanted = self.headers.get("Range", "")
                if wanted.startswith("bytes=0-") and "norange" not in self.path:
                    end = min(int(wanted[8:]), len(body) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{end}/{len(body)}")
                    body = body[:end + 1]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        worker = AudioLength(WorkerConfig(allow_private_urls=True))
        out: dict[str, Any] = {}
        for name, body in files.items():
            path = self.tmp / "decode.wav"
            path.write_bytes(body)
            url = f"{base}/{'big' if len(body) > MiB else 'small'}.wav"
            out[name] = {
                "header, in memory": timed(functools.partial(measure, body), 20),
                "librosa.load, in memory": timed(functools.partial(librosa.load, path, sr=None, mono=False), 5),
                "job, range request": timed(functools.partial(worker.run, {"url": url}), 10),
                "job, whole download": timed(functools.partial(worker.run, {"url": url + "?norange"}), 5),
            }
            self.log(f"  {name}: {out[name]}")
        with server("--no-dashboard", "--allow-private-urls", "--data-dir", str(self.tmp / "audio"),
                    "--pools", "euro.results=0,audio.speech=0,audio.length=2", env=TRUSTED_LOAD) as running:
            self.log("  audio jobs through the product, 1 x 16")
            out["jobs"] = self.measure(running.ws_url, 1, 16, 100 if self.quick else 600, "audio.length",
                                       {"url": f"{base}/small.wav"})
        httpd.shutdown()
        out["memory"] = {}
        for minutes in (20, 120):  # MP3s of silence without a Xing frame: counted frame by frame
            body, _ = silent_mp3(minutes)
            path = self.tmp / f"silence-{minutes}.mp3"
            path.write_bytes(body)
            out["memory"][f"{minutes} min, {len(body) / MiB:.1f} MiB"] = measure_in_child(path)
            self.log(f"  {minutes} min silent MP3: {out['memory']}")
        return out

    @staticmethod
    async def _first_result(url: str) -> None:
        while True:
            try:
                async with ami.Client(url, reconnect=False) as client:
                    await client.submit("echo", {})
                    return
            except ami.ConnectionFailed:
                await asyncio.sleep(0.05)  # not listening yet

    # --- cold start --------------------------------------------------------------------------------

    def cold_start(self) -> list[float]:
        from bench.servers import ServerProcess

        out = []
        for _ in range(self.runs):
            process = ServerProcess("--enable-echo", "--data-dir", str(self.tmp / "cold"))
            try:
                asyncio.run(asyncio.wait_for(self._first_result(process.ws_url), 120))
                out.append(time.perf_counter() - process.started)
                self.log(f"  first result after {out[-1]:.2f} s")
            finally:
                process.stop()
        return out
