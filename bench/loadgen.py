"""A load generator: many WebSocket connections, many jobs in flight on each, latency from send to result.

    python -m bench.loadgen ws://127.0.0.1:8000/ws --connections 32 --in-flight 64 --jobs 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import websockets


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank), not the maximum."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class LoadResult:
    jobs: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> str:
        return (f"{self.jobs} jobs in {self.seconds:.2f} s: {self.rate:,.0f} jobs/s, "
                f"p50 {self.p50:.2f} ms, p99 {self.p99:.2f} ms, {self.errors} errors")


async def _connection(url: str, kind: str, args: dict[str, Any], jobs: int, in_flight: int,
                      result: LoadResult) -> None:
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        sent_at: dict[str, float] = {}
        next_index = 0
        finished = 0

        async def send_one() -> None:
            nonlocal next_index
            ref = str(next_index)
            next_index += 1
            sent_at[ref] = time.perf_counter()
            await ws.send(json.dumps({"op": "submit", "kind": kind, "args": args, "ref": ref}))

        for _ in range(min(in_flight, jobs)):
            await send_one()
        async for raw in ws:
            frame = json.loads(raw)
            kind_of = frame.get("type")
            if kind_of == "result" or kind_of == "error":
                started = sent_at.pop(frame.get("ref", ""), None)
                if started is None:
                    continue
                if kind_of == "result" and frame.get("status") == "succeeded":
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                    result.jobs += 1
                else:
                    result.errors += 1
                finished += 1
                if next_index < jobs:
                    await send_one()
                if finished == jobs:
                    return


async def run_load(url: str, connections: int = 1, in_flight: int = 64, jobs_per_connection: int = 1000,
                   kind: str = "echo", args: dict[str, Any] | None = None) -> LoadResult:
    """Open `connections` sockets, keep `in_flight` jobs outstanding on each, until each has done its jobs."""
    result = LoadResult()
    started = time.perf_counter()
    await asyncio.gather(*(
        _connection(url, kind, args or {}, jobs_per_connection, in_flight, result) for _ in range(connections)
    ))
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per connection")
    parser.add_argument("--kind", default="echo")
    parser.add_argument("--args", default="{}", help="JSON args of every job")
    options = parser.parse_args()
    result = asyncio.run(run_load(options.url, options.connections, options.in_flight, options.jobs, options.kind,
                                  json.loads(options.args)))
    print(result.summary())


if __name__ == "__main__":
    main()
