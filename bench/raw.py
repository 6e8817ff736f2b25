"""The raw Ray baseline, the strongest a Ray user would write for echo calls: a plain actor (sync methods, one at a
time) and an async actor (1,000 at once), called from one driver with windows of calls in flight, by a sync
`ray.wait` loop and by asyncio `await`. The product is held against the best of them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from bench.loadgen import LoadResult

WINDOWS = (64, 256, 2048)


class PlainEcho:
    def run(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": args}


class AsyncEcho:
    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": args}


def actors() -> dict[str, Any]:
    """The two actors, started and answering."""
    made: dict[str, Any] = {"plain actor": ray.remote(PlainEcho).options(num_cpus=0.25).remote(),
                            "async actor": ray.remote(AsyncEcho).options(num_cpus=0.25, max_concurrency=1000).remote()}
    ray.get([actor.run.remote({}) for actor in made.values()])
    return made


def with_wait(actor: Any, window: int, total: int) -> LoadResult:
    """A sync driver: `window` calls in flight, topped up as `ray.wait` reports them done."""
    result = LoadResult()
    sent: dict[Any, float] = {}
    remaining = total
    began = time.perf_counter()
    while remaining or sent:
        while remaining and len(sent) < window:
            sent[actor.run.remote({})] = time.perf_counter()
            remaining -= 1
        ready, _ = ray.wait(list(sent), num_returns=1)
        more, _ = ray.wait([ref for ref in sent if ref not in ready], num_returns=len(sent) - 1, timeout=0) \
            if len(sent) > 1 else ([], [])
        done = ready + more
        ray.get(done)
        now = time.perf_counter()
        for ref in done:
            result.latencies_ms.append((now - sent.pop(ref)) * 1000)
            result.jobs += 1
    result.seconds = time.perf_counter() - began
    return result


def with_asyncio(actor: Any, window: int, total: int) -> LoadResult:
    """An asyncio driver: `window` coroutines, each awaiting one call after another."""
    async def load() -> LoadResult:
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
        await asyncio.gather(*(caller() for _ in range(window)))
        result.seconds = time.perf_counter() - began
        return result

    return asyncio.run(load())


DRIVERS = {"ray.wait": with_wait, "asyncio": with_asyncio}
