"""The goals `make bench` checks, each a ratio or a bound measured in one run; each carries its measured figure."""

from __future__ import annotations

import statistics

from bench.loadgen import percentile
from bench.results import Results


def targets(results: Results) -> list[tuple[str, bool]]:
    raw, served, stores, conns, slow, cold = (results.raw, results.served, results.stores, results.conns,
                                              results.slow, results.cold)
    product = stores["sqlite"]
    shapes = results.shapes
    best = results.best_raw
    push_p99 = percentile(results.polls["push (WebSocket)"], 0.99)
    unloaded = shapes[0]
    minimal = [held for label, held in conns.items() if "minimal" in label]
    floor = min(minimal, key=lambda held: held.per_bytes) if minimal else None
    mine = next((held for label, held in conns.items() if label.endswith(" idle")), None)
    most = next((held for label, held in conns.items() if "file limit" in label), None)
    burst = next((held for label, held in conns.items() if "at once" in label), None)
    unbatched = stores.get("sqlite, unbatched", product)
    big, one = shapes[-1], shapes[1]
    goals = [
        (f"{big} echo, sqlite store, batched >= 1.2x raw Ray's best calls/s ({best.rate:,.0f}): "
         f"{product[big].rate / best.rate:.2f}x", product[big].rate >= 1.2 * best.rate),
        (f"{big} echo, sqlite store, unbatched >= 0.8x raw Ray's best: {unbatched[big].rate / best.rate:.2f}x",
         unbatched[big].rate >= 0.8 * best.rate),
        (f"{one} echo, batched >= 1.0x raw Ray's best: {product[one].rate / best.rate:.2f}x",
         product[one].rate >= best.rate),
        (f"one job at a time <= 1.3x raw Ray's best round trip, sqlite store: {product[unloaded].p50:.2f} against "
         f"{raw[unloaded].p50:.2f} ms ({product[unloaded].p50 / raw[unloaded].p50:.2f}x)",
         product[unloaded].p50 <= 1.3 * raw[unloaded].p50),
        ("Ray Serve's WebSocket ingress >= 4x at every load: "
         + ", ".join(f"{product[s].rate / served[s].rate:.1f}x" for s in shapes),
         all(product[s].rate >= 4 * served[s].rate for s in shapes)),
    ]
    goals += [
        ("ahead of Ray Serve, every load", all(product[s].rate > served[s].rate for s in shapes)),
        (f"push delay p99 <= 5 ms: {push_p99:.2f} ms", push_p99 <= 5),
        (f"an idle socket costs <= 1.0x a minimal Starlette app's under uvicorn's best WebSocket implementation "
         f"(same run): {mine.per_bytes / 1024:.1f} against {floor.per_bytes / 1024:.1f} KiB "
         f"({mine.per_bytes / floor.per_bytes:.2f}x)" if mine and floor else
         "an idle socket costs <= 1.0x a minimal Starlette app's",
         mine is not None and floor is not None and mine.per_bytes <= floor.per_bytes),
        ("as many idle sockets as the file limit allows, all answering"
         + (f": {most.held:,} held, {most.answering:,} answering" if most else ""),
         most is not None and most.asked >= 18_000 and most.held == most.answering == most.asked),
        (f"a burst of 10,000 connections accepted without errors: {burst.errors} errors" if burst else
         "a burst of 10,000 connections accepted without errors",
         burst is not None and burst.asked >= 10_000 and burst.errors == 0 and burst.held == burst.asked),
        (f"first result within 10 s of start: {statistics.median(cold):.1f} s", statistics.median(cold) <= 10),
        ("a never-reading client is cut off (4008) before the server grows by 2x its outbox limit",
         slow["close code"] == 4008 and slow["rss growth MiB"] <= 2 * slow["limit MiB"]),
        ("store costs at most a quarter of the throughput",
         all(stores[n][s].rate >= 0.75 * stores["memory"][s].rate for n in ("sqlite", "redis") for s in shapes)),
    ]
    if results.flood and results.slowloris:
        during = results.flood["flood"]
        left = sum(s["left"] for s in results.slowloris.values())
        goals += [
            (f"while one socket floods, another's ping p99 <= 50 ms and echo round trip p99 <= 100 ms: "
             f"{during['ping p99']:.1f} and {during['echo p99']:.1f} ms",
             during["ping p99"] <= 50 and during["echo p99"] <= 100),
            (f"no slowloris socket left 15 s later: {left:.0f} left", left == 0),
        ]
    if results.speech:
        ten, hour, product = results.speech["ten"], results.speech["hour"], results.speech["product"]
        goals += [
            (f"audio.speech real-time factor on one core, 10 minutes of speech and silence >= 100x: "
             f"{ten['rtf']:,.0f}x", ten["rtf"] >= 100),
            (f"audio.speech's first progress frame <= 1 s after the download starts: "
             f"{product['first progress ms']:.0f} ms through the product", product["first progress ms"] <= 1000),
            (f"a speech actor's peak RSS grows <= 50 MiB measuring a 60-minute file: {hour['rss growth MiB']:.1f} MiB",
             hour["rss growth MiB"] <= 50 and hour["duration"] >= 3500),
        ]
    if results.fairness:
        fair = results.fairness
        ratio = fair["flood wait p95"] / max(fair["alone wait p95"], 1e-9)
        goals.append((f"a light tenant's p95 wait to start beside a flooding one <= 1.2x its wait alone: "
                      f"{fair['flood wait p95']:.2f} against {fair['alone wait p95']:.2f} ms ({ratio:.2f}x)",
                      ratio <= 1.2))
    return goals
