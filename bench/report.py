"""BENCHMARKS.md from one run's results: tables, the targets met or missed, and the notes."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import websockets

from bench.loadgen import percentile
from bench.results import Results
from bench.targets import targets


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


def misbehaving(results: Results) -> list[str]:
    """The flood and slowloris rows: what one misbehaving client does to another's latency and connect time."""
    flood, slowloris = results.flood, results.slowloris
    if not flood or not slowloris:
        return []
    flooder = flood["flooder"]
    out = ["", "## A client that floods, sockets that trickle", "",
           "One socket sends `submit` and `ping` frames as fast as it can (from its own process and address, reading "
           "the answers, connecting again when closed) while another client pings, then runs an echo job to its "
           "result, then rests 10 ms, again and again; the same client alone first. Milliseconds.", "",
           "| another client | ping p50 | ping p99 | echo p50 | echo p99 | rounds |", "|---|---|---|---|---|---|"]
    for label in ("alone", "flood"):
        f = flood[label]
        out.append(f"| {'during the flood' if label == 'flood' else 'alone'} | {f['ping p50']:.2f} | "
                   f"{f['ping p99']:.2f} | {f['echo p50']:.2f} | {f['echo p99']:.2f} | {f['samples']:.0f} |")
    out += ["", f"The flooder sent {flooder['frames']:,} frames; {flooder['rate_limited']:,} were answered "
                f"`rate_limited`, {flooder['accepted']:,} submissions accepted; it was closed "
                f"{flooder['reconnects']} time(s) (codes {flooder['close codes'] or 'none'}). The rest waited in "
                "its own socket buffers: the server reads a connection over its budget at most 1,000 frames a "
                "second.",
            "", "2,000 sockets sending a WebSocket upgrade one byte every 10 s; another client (from 127.0.0.2) "
                "connects, pings and leaves every 100 ms meanwhile.", "",
            "| slowloris sockets | refused at once (429) | closed at the deadline (408) | left after 15 s | "
            "normal connect p50 ms | normal connect max ms |", "|---|---|---|---|---|---|"]
    for label, s in slowloris.items():
        out.append(f"| {s['sockets']:,.0f} {label} | {s['refused (429)']:,.0f} | {s['timed out (408)']:,.0f} | "
                   f"{s['left']:,.0f} | {s['connect p50']:.2f} | {s['connect max']:.2f} |")
    fair = results.fairness
    if fair:
        out += ["", "Two tenants on `audio.length` (one actor, 16 slots): tenant A (a process of its own) submits 800 "
                    "jobs a second at a host that answers in 200 ms, ten times what the slots run; tenant B submits 4 "
                    "a second at one that answers at once. B's jobs, from the server's `queued_ms` (accepted to start) "
                    "and `elapsed_ms` (accepted to result), milliseconds:", "",
                "| tenant B | wait p50 | wait p95 | in all p50 | in all p95 |", "|---|---|---|---|---|"]
        for label, name in (("alone", "A idle"), ("flood", f"A flooding ({fair['A sent']:,} submitted)")):
            out.append(f"| {name} | {fair[label + ' wait p50']:.2f} | {fair[label + ' wait p95']:.2f} | "
                       f"{fair[label + ' total p50']:.1f} | {fair[label + ' total p95']:.1f} |")
    return out


def write_report(results: Results, path: Path) -> None:
    raw, served, stores, polls, conns, slow, audio, cold = (results.raw, results.served, results.stores,
                                                            results.polls, results.conns, results.slow,
                                                            results.audio, results.cold)
    shapes = results.shapes
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Written by `{' '.join(['python -m bench', *sys.argv[1:]])}` (`make bench`) on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())} in {results.seconds:.0f} s. Each figure is the median of "
        f"{results.runs} run(s); the load generator shares the machine with what it measures.",
        "",
        f"Machine: {machine()}.",
        "",
        "## Echo jobs: the product against raw Ray and Ray Serve",
        "",
        "Zero-delay `echo` jobs; `1 x 1` is one connection (or caller) with one job at a time (the unloaded "
        "round trip), `1 x 64` one with 64 jobs in flight, `32 x 64` 32 of them. "
        "The product goes through the socket, protocol, job store, actor and push, batching queued jobs into one "
        "actor call while its actor is busy (`AMI_BATCH`; the `sqlite, unbatched` rows turn it off); raw Ray is the "
        "strongest driver of `bench/raw.py` at that load (a plain actor or an async one, called from one process by "
        "a sync `ray.wait` loop or by asyncio `await`); Ray Serve is a FastAPI WebSocket ingress deployment calling "
        "a downstream echo deployment (`bench/serve_app.py`).",
        "",
        "| path | load | jobs/s | p50 ms | p99 ms | vs raw Ray, same load | vs raw Ray's best |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("raw Ray", raw), ("Ray Serve WebSocket", served)] + [(f"product, {name} store", figures)
                                                                  for name, figures in stores.items()]
    for name, figures in rows:
        for label in shapes:
            ratio, best = figures[label].rate / raw[label].rate, figures[label].rate / results.best_raw.rate
            out.append(f"| {name} | {label} | {figures[label].cells()} | {ratio:.0%} | {best:.2f}x |")
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
        out.append(f"| {name} | {statistics.median(delays):.1f} | {percentile(delays, 0.99):.1f} |")

    out += ["", "Raw Ray, one driver, by calls in flight (the best of these and of the loads above is what the "
                "product is held against):", ""]
    out += [f"- {label}: {figure.rate:,.0f} calls/s, p50 {figure.p50:.2f} ms" for label, figure in raw.items()
            if label.startswith("window")]

    out += ["", "## Idle connections", "",
            "Server RSS per connection, read 2 s after the sockets opened (all from 127.0.0.1, so the per-address "
            "cap, `AMI_MAX_CONNECTIONS_PER_IP`, is lifted for these runs). Permessage-deflate is off unless "
            "`AMI_WS_DEFLATE=1`, because its zlib state doubles an idle socket's memory: clients that ask for it "
            "(browsers do) get plain frames; the opt-in row shows what turning it on costs.", "",
            "| sockets | held | server RSS per connection | answering a ping | failed to open |",
            "|---|---|---|---|---|"]
    for label, held in conns.items():
        out.append(f"| {label} | {held.held:,} | {held.per_bytes / 1024:.1f} KiB | {held.answering:,} | "
                   f"{held.errors} |")

    out += ["", "## A client that never reads", "",
            "It sends 20 `watch` frames naming 60 finished jobs of 60 KB results each (72 MB asked for) and reads "
            "nothing; another client pings every 10 ms meanwhile. Server RSS is sampled during the episode, "
            "against its RSS after a client that reads had watched the same jobs (so fixed caches, such as "
            "SQLite's 2 MB page cache, are full before).", "",
            f"- closed with {slow['close code']:.0f}; server RSS grew by at most {slow['rss growth MiB']:.1f} MiB "
            f"against a {slow['limit MiB']:.0f} MiB outbox limit (kernel socket buffers are not in the RSS)",
            f"- the other client's ping meanwhile: p50 {slow['ping p50 ms']:.2f} ms, p99 {slow['ping p99 ms']:.2f} ms"]

    out += misbehaving(results)

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

    out += speech_section(results.speech)

    out += ["", "## Cold start", "", f"`python -m server` (embedded Ray, dashboard on) to the first echo result: "
                                     f"{statistics.median(cold):.2f} s (runs: {', '.join(f'{c:.2f}' for c in cold)})."]

    out += ["", "## Targets", "", "| target | |", "|---|---|"]
    out += [f"| {name} | {verdict(ok)} |" for name, ok in targets(results)]
    for extra in ("SCALE.md", "SOAK.md"):  # from `python -m bench scale` and `python -m bench soak`
        written = Path(__file__).with_name(extra)
        if written.exists():
            out += ["", written.read_text().strip()]
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        out += ["", notes.read_text().strip()]
    path.write_text("\n".join(out) + "\n")


def speech_section(speech: dict[str, Any]) -> list[str]:
    """audio.speech: the model's pace on one core, its memory over an hour, and its first frame through the product."""
    if not speech:
        return []
    out = ["", "## Speech (audio.speech)", "",
           "The worker as its actor holds it (Silero VAD loaded and warmed), in a fresh process pinned to one core, "
           "measuring espeak-ng speech and silence served from loopback (download included); peak RSS growth is the "
           "peak over the warm worker's RSS.", "",
           "| file | audio | wall time | real-time factor | segments | progress frames | first progress | "
           "peak RSS growth |", "|---|---|---|---|---|---|---|---|"]
    for label, key in (("10 min, 22.05 kHz WAV", "ten"), ("60 min, 8 kHz WAV", "hour")):
        probe = speech[key]
        out.append(f"| {label} ({probe['bytes'] / 2**20:.1f} MiB) | {probe['duration']:,.0f} s | "
                   f"{probe['seconds']:.2f} s | {probe['rtf']:,.0f}x | {probe['segments']:,} | "
                   f"{probe['progress frames']} | {probe['first progress s'] * 1000:.0f} ms | "
                   f"{probe['rss growth MiB']:.1f} MiB |")
    product = speech["product"]
    out += ["", f"Through the product (`python -m server`, one speech actor, the 10-minute file): accepted after "
                f"{product['accepted ms']:.1f} ms, first `progress` frame after {product['first progress ms']:.0f} ms "
                f"(download included), result after {product['result ms'] / 1000:.2f} s."]
    return out
