"""`python -m bench scale --servers 1,2,4`: N server processes on one Ray cluster against N raw Ray drivers,
summed jobs/s, in one run. Writes bench/SCALE.md, which BENCHMARKS.md includes. On a machine with few cores it
shows little: the servers, the drivers, the actors and the load generator share them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.loadgen import run_load
from bench.measure import TRUSTED_LOAD
from bench.servers import Process, ServerProcess, ray_cluster

ECHO_ONLY = ("--enable-echo", "--no-dashboard", "--store", "memory",
             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1")
OUT = Path(__file__).with_name("SCALE.md")


def product(address: str, servers: int, jobs: int, tmp: Path) -> float:
    running = [ServerProcess(*ECHO_ONLY, "--data-dir", str(tmp / f"s{servers}-{n}"),
                             env={"RAY_ADDRESS": address, **TRUSTED_LOAD})
               for n in range(servers)]
    try:
        for server in running:
            server.wait_listening(180)

        async def all_at_once() -> float:
            for server in running:  # warm up
                await run_load(server.ws_url, 1, 8, 100)
            began = time.perf_counter()
            results = await asyncio.gather(*(run_load(server.ws_url, 8, 64, jobs) for server in running))
            return sum(result.jobs for result in results) / (time.perf_counter() - began)

        return asyncio.run(all_at_once())
    finally:
        for server in running:
            server.stop()


def raw(address: str, drivers: int, total: int) -> float:
    started = [Process([sys.executable, "-m", "bench.raw_driver", address, "2048", str(total)])
               for _ in range(drivers)]
    rates = []
    for driver in started:
        rates.append(json.loads(driver.wait_for_line(lambda line: line.startswith("{"), 300))["rate"])
        driver.popen.wait(60)
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    parser.add_argument("--servers", default="1,2,4", help="server counts, comma-separated")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per connection (8 connections per server)")
    options = parser.parse_args(sys.argv[2:] if sys.argv[1:2] == ["scale"] else sys.argv[1:])
    counts = [int(n) for n in options.servers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ami-scale-"))
    rows = []
    try:
        with ray_cluster("1", str(os.cpu_count() or 2)) as cluster:
            for count in counts:
                served = product(cluster["address"], count, options.jobs, tmp)
                direct = raw(cluster["address"], count, 8 * 64 * options.jobs // 8)
                rows.append((count, served, direct))
                print(f"{count} servers: {served:,.0f} jobs/s; {count} raw drivers: {direct:,.0f} calls/s",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base_served, base_raw = rows[0][1], rows[0][2]
    lines = ["## Scale-out", "", f"Written by `python -m bench scale --servers {options.servers}` on "
             f"{time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPUs ({platform.machine()}): N server "
             "processes on one Ray cluster (each with its own echo actor, 8 connections x 64 in flight), against "
             "N raw Ray drivers (each with its own echo actor, 2,048 calls in flight), summed, in one run.", "",
             "| N | servers, jobs/s | vs N=1 | raw drivers, calls/s | vs N=1 | servers vs raw |",
             "|---|---|---|---|---|---|"]
    for count, served, direct in rows:
        lines.append(f"| {count} | {served:,.0f} | {served / base_served:.2f}x | {direct:,.0f} | "
                     f"{direct / base_raw:.2f}x | {served / direct:.2f} |")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
