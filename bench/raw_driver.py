"""One raw Ray driver for `bench scale`: joins the cluster, calls its own echo actor with WINDOW calls in flight
for TOTAL calls, prints one JSON line with its calls/s.

    python -m bench.raw_driver ADDRESS WINDOW TOTAL
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import ray

from actors import WorkerConfig
from actors._actor import named_actor


def main() -> None:
    address, window, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ray.init(address=address, log_to_driver=False)
    echo = ray.remote(named_actor("Echo"))  # the product's own echo actor
    actor: Any = echo.options(num_cpus=0.25, max_concurrency=1000).remote("actors.echo", WorkerConfig())
    ray.get(actor.node_id.remote())

    async def load() -> float:
        remaining = total

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await actor.run.remote({})

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(window)))
        return total / (time.perf_counter() - began)

    asyncio.run(load())  # warm up
    print(json.dumps({"rate": asyncio.run(load())}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
