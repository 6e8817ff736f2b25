"""The goals `make bench` checks, each a ratio or a bound measured in one run."""

from __future__ import annotations

import statistics

from bench.loadgen import percentile
from bench.results import Results


def targets(results: Results) -> list[tuple[str, bool]]:
    raw, served, stores, conns, slow, cold = (results.raw, results.served, results.stores, results.conns,
                                              results.slow, results.cold)
    product = stores["sqlite"]
    shapes = results.shapes
    push_p99 = percentile(results.polls["push (WebSocket)"], 0.99)
    big, one = shapes[-1], shapes[1]
    return [
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
