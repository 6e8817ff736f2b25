"""`make bench`: every figure of BENCHMARKS.md, measured on this machine in one run.

    python -m bench [--quick] [--out BENCHMARKS.md]
    python -m bench scale --servers 1,2,4     (N servers on one Ray cluster: bench/SCALE.md)
    python -m bench soak --minutes 10         (stores failing under mixed load: bench/SOAK.md)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import Bench, MiB
from bench.report import write_report
from bench.results import Results
from bench.servers import keep_ray_on_loopback, redis_server
from bench.speech import measure as measure_speech


def main() -> None:
    keep_ray_on_loopback()
    if sys.argv[1:2] == ["scale"]:
        from bench.scale import main as scale

        scale()
        return
    if sys.argv[1:2] == ["soak"]:
        from bench.soak import main as soak

        soak()
        return
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
        stores["sqlite, unbatched"] = section("product, store sqlite, batching off (AMI_BATCH=0)",
                                              functools.partial(bench.product, "sqlite", False))
    # Raw Ray and Ray Serve right after the product's loads: the machine's speed drifts over a run (by as much as
    # 2x between runs here), and the goals are ratios between these rows.
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * MiB, log_to_driver=False)
    raw = section("raw Ray", bench.raw_ray)
    served = section("Ray Serve", bench.ray_serve)
    ray.shutdown()
    polls = section("push against polling", bench.push_and_poll)
    conns = section("idle connections", bench.connections)
    slow = section("a client that never reads", bench.slow_reader)
    flood = section("a client that floods", bench.flood)
    slowloris = section("slowloris sockets", bench.slowloris)
    fairness = section("two tenants, one flooding", bench.fairness)
    audio = section("audio", bench.audio)
    speech = section("speech (audio.speech)", lambda: measure_speech(bench.tmp / "speech", bench.quick))
    cold = section("cold start", bench.cold_start)

    shutil.rmtree(bench.tmp, ignore_errors=True)
    results = Results(options.quick, bench.runs, time.time() - started, [label for label, *_ in bench.shapes()],
                      stores, raw, served, polls, conns, slow, audio, cold, flood, slowloris, fairness, speech)
    write_report(results, Path(options.out))
    bench.log(f"wrote {options.out}")


if __name__ == "__main__":
    main()
