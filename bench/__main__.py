"""`make bench`: every figure of BENCHMARKS.md, measured on this machine in one run.

    python -m bench [--quick] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import platform
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
import psutil
import soundfile
import websockets

from bench.hostile import measure_in_child, silent_mp3
from bench.loadgen import LoadResult, run_load
from bench.servers import free_port, redis_server, server

ECHO_ONLY = ("--enable-echo", "--no-dashboard", "--pools", "audio.length=0,euro.results=0")
MiB = 1024 * 1024


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

    def product(self, store: str) -> dict[str, Figure]:
        figures = {}
        with server(*ECHO_ONLY, "--store", store, "--data-dir", str(self.tmp / store.replace("/", "_"))) as running:
            for label, connections, in_flight, jobs in self.shapes():
                self.log(f"  product, store {store}, {label}")
                figures[label] = self.measure(running.ws_url, connections, in_flight, jobs)
        return figures

    def raw_ray(self) -> dict[str, Figure]:
        import ray

        from actors import WorkerConfig
        from actors._actor import KindActor

        actor: Any = ray.remote(KindActor).options(num_cpus=0.25, max_concurrency=1000).remote("echo", WorkerConfig())
        ray.get(actor.node_id.remote())

        async def load(concurrency: int, total: int) -> LoadResult:
            result = LoadResult()
            remaining = total

            async def caller() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    started = time.perf_counter()
                    await actor.run.remote({})
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                    result.jobs += 1

            began = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            result.seconds = time.perf_counter() - began
            return result

        figures = {}
        for label, connections, in_flight, jobs in self.shapes():
            self.log(f"  raw Ray, {label}")
            asyncio.run(load(8, 200))
            results = []
            for _ in range(self.runs):
                result = asyncio.run(load(connections * in_flight, connections * jobs))
                self.log(f"    {result.summary()}")
                results.append(result)
            figures[label] = Figure.median_of(results)
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

    def connections(self) -> dict[int, tuple[int, float, bool]]:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        counts = [1000, 2000] if self.quick else [1000, 10000]
        out = {}
        for count in counts:
            with server(*ECHO_ONLY, "--data-dir", str(self.tmp / "conns")) as running:
                held, per, alive = asyncio.run(self._hold(running, count))
                self.log(f"  {count} connections: {held} held, {per / 1024:.1f} KiB each, answering: {alive}")
                out[count] = (held, per, alive)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return out

    @staticmethod
    async def _hold(running: Any, count: int) -> tuple[int, float, bool]:
        async with websockets.connect(running.ws_url) as probe:
            await probe.send("ping")
            await probe.recv()
        before = running.rss()
        sockets: list[Any] = []
        for start in range(0, count, 250):
            batch = await asyncio.gather(*(
                websockets.connect(running.ws_url, ping_interval=None, compression=None)
                for _ in range(start, min(count, start + 250))), return_exceptions=True)
            sockets.extend(s for s in batch if not isinstance(s, BaseException))
        await asyncio.sleep(2)  # let the server settle before reading its memory
        after = running.rss()
        sample = sockets[:: max(1, len(sockets) // 50)]
        await asyncio.gather(*(s.send("ping") for s in sample))
        answers = await asyncio.gather(*(asyncio.wait_for(s.recv(), 30) for s in sample), return_exceptions=True)
        alive = all(isinstance(a, str) and "pong" in a for a in answers)
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        return len(sockets), (after - before) / max(1, len(sockets)), alive

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
                    "--pools", "euro.results=0,audio.length=2") as running:
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
                async with websockets.connect(url) as ws:
                    await ws.send('{"op":"submit","kind":"echo","args":{}}')
                    while json.loads(await ws.recv())["type"] != "result":
                        pass
                    return
            except OSError:
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


def machine() -> str:
    import ray
    import starlette
    import uvicorn

    memory = psutil.virtual_memory().total / 1024**3
    return (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), {memory:.0f} GiB, "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, Ray {ray.__version__}, "
            f"Starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, websockets {websockets.__version__}")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short run of each figure (a smoke run)")
    parser.add_argument("--out", default="BENCHMARKS.md")
    options = parser.parse_args()
    bench = Bench(options.quick)
    started = time.time()

    def section(title: str, work: Callable[[], Any]) -> Any:
        bench.log(f"== {title}")
        return work()

    stores = {}
    with redis_server(bench.tmp) as redis_url:
        for store in ("memory", "sqlite", redis_url):
            name = "redis" if store.startswith("redis") else store
            stores[name] = section(f"product, store {store}", functools.partial(bench.product, store))
    polls = section("push against polling", bench.push_and_poll)
    conns = section("idle connections", bench.connections)
    slow = section("a client that never reads", bench.slow_reader)
    audio = section("audio", bench.audio)
    cold = section("cold start", bench.cold_start)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * MiB,
             log_to_driver=False)
    raw = section("raw Ray", bench.raw_ray)
    served = section("Ray Serve", bench.ray_serve)
    ray.shutdown()

    shapes = [label for label, *_ in bench.shapes()]
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Written by `{' '.join(['python -m bench', *sys.argv[1:]])}` (`make bench`) on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())} in {time.time() - started:.0f} s. Each figure is the median of "
        f"{bench.runs} run(s); the load generator shares the machine with what it measures.",
        "",
        f"Machine: {machine()}.",
        "",
        "## Echo jobs: the product against raw Ray and Ray Serve",
        "",
        "Zero-delay `echo` jobs; `1 x 1` is one connection (or caller) with one job at a time (the unloaded "
        "round trip), `1 x 64` one with 64 jobs in flight, `32 x 64` 32 of them. "
        "The product goes through the socket, protocol, job store, actor and push; raw Ray is the same actor "
        "called with `await actor.run.remote()` from one process; Ray Serve is a FastAPI WebSocket ingress "
        "deployment calling a downstream echo deployment (`bench/serve_app.py`).",
        "",
        "| path | load | jobs/s | p50 ms | p99 ms | vs raw Ray |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("raw Ray", raw), ("Ray Serve WebSocket", served)] + [(f"product, {name} store", figures)
                                                                  for name, figures in stores.items()]
    for name, figures in rows:
        for label in shapes:
            ratio = figures[label].rate / raw[label].rate
            out.append(f"| {name} | {label} | {figures[label].cells()} | {ratio:.0%} |")
    product = stores["sqlite"]
    out += ["", "Store cost (jobs/s against no store):", ""]
    for name in ("sqlite", "redis"):
        for label in shapes:
            out.append(f"- {name}, {label}: {stores[name][label].rate / stores['memory'][label].rate:.0%} "
                       f"of the memory store's throughput")

    out += ["", "## Push against polling", "",
            "Echo jobs of 300 ms and more, finishing one at a time; the figure is how long after the server saw "
            "the job finish (its `finished_at`) the client knew the result.", "", "| how | p50 ms | p99 ms |",
            "|---|---|---|"]
    for name, delays in polls.items():
        ordered = sorted(delays)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        out.append(f"| {name} | {statistics.median(ordered):.1f} | {p99:.1f} |")
    push_p99 = sorted(polls["push (WebSocket)"])[-1]

    out += ["", "## Idle connections", "", "| connections | held | server RSS per connection | all answering |",
            "|---|---|---|---|"]
    for count, (held, per, alive) in conns.items():
        out.append(f"| {count:,} | {held:,} | {per / 1024:.1f} KiB | {'yes' if alive else 'no'} |")

    out += ["", "## A client that never reads", "",
            "It sends 20 `watch` frames naming 60 finished jobs of 60 KB results each (72 MB asked for) and reads "
            "nothing; another client pings every 10 ms meanwhile. Server RSS is sampled during the episode, "
            "against its RSS after a client that reads had watched the same jobs (so fixed caches, such as "
            "SQLite's 2 MB page cache, are full before).", "",
            f"- closed with {slow['close code']:.0f}; server RSS grew by at most {slow['rss growth MiB']:.1f} MiB "
            f"against a {slow['limit MiB']:.0f} MiB outbox limit (kernel socket buffers are not in the RSS)",
            f"- the other client's ping meanwhile: p50 {slow['ping p50 ms']:.2f} ms, p99 {slow['ping p99 ms']:.2f} ms"]

    out += ["", "## Audio", "",
            "Milliseconds: the header path (`actors.audio.measure`) against a full `librosa.load` decode of the "
            "same bytes, then a whole `audio.length` job (download included, from loopback) with a range request "
            "of the header against downloading the whole file.", "",
            "| file | header, in memory | librosa.load | job, range request | job, whole download |",
            "|---|---|---|---|---|"]
    for name, value in audio.items():
        if name not in ("jobs", "memory"):
            out.append(f"| {name} | " + " | ".join(f"{ms:.3f}" for ms in value.values()) + " |")
    out += ["", f"`audio.length` jobs through the product on a 1 s WAV served from loopback, 2 actors, 1 connection "
                f"with 16 in flight: {audio['jobs'].rate:,.0f} jobs/s, p50 {audio['jobs'].p50:.1f} ms, "
                f"p99 {audio['jobs'].p99:.1f} ms."]
    out += ["", "Peak memory of measuring a long MP3 of silence (48 kHz stereo, 32 kbit/s, no Xing frame, so every "
                "frame is counted), in a fresh process: how far its peak RSS rose above its RSS before measuring. "
                "Decoding the 20-minute file whole, as the product once did, peaked at about 716 MB.", "",
            "| file | frames | peak RSS growth |", "|---|---|---|"]
    for name, probe in audio["memory"].items():
        out.append(f"| {name} | {probe['frames']:,} | {probe['grew_kib'] / 1024:.1f} MiB |")

    out += ["", "## Cold start", "", f"`python -m server` (embedded Ray, dashboard on) to the first echo result: "
                                     f"{statistics.median(cold):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cold)})."]

    big, one = shapes[-1], shapes[1]
    targets = [
        (f"full path (sqlite store) >= 60% of raw Ray's jobs/s, {one}", product[one].rate >= 0.6 * raw[one].rate),
        (f"full path (sqlite store) >= 60% of raw Ray's jobs/s, {big}", product[big].rate >= 0.6 * raw[big].rate),
        ("ahead of Ray Serve, every load", all(product[s].rate > served[s].rate for s in shapes)),
        ("push delay p99 <= 5 ms", push_p99 <= 5),
        ("<= 40 KiB per idle connection", all(per <= 40 * 1024 for _, per, _ in conns.values())),
        ("10,000 connections held", conns.get(10000, (0, 0, False))[0] == 10000 and conns[10000][2]
         if 10000 in conns else False),
        ("first result within 10 s of start", statistics.median(cold) <= 10),
        ("a never-reading client is cut off (4008) before the server grows by 2x its outbox limit",
         slow["close code"] == 4008 and slow["rss growth MiB"] <= 2 * slow["limit MiB"]),
        ("store costs at most a quarter of the throughput",
         all(stores[n][s].rate >= 0.75 * stores["memory"][s].rate for n in ("sqlite", "redis") for s in shapes)),
    ]
    out += ["", "## Targets", "", "| target | |", "|---|---|"] + [f"| {name} | {verdict(ok)} |" for name, ok in targets]
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        out += ["", notes.read_text().strip()]
    Path(options.out).write_text("\n".join(out) + "\n")
    bench.log(f"wrote {options.out}")


if __name__ == "__main__":
    main()
