"""echo: returns its args; for benchmarks and probes. Off unless the server runs with --enable-echo."""

from __future__ import annotations

import asyncio
from typing import Any

from actors._base import BatchSpec, InvalidArgs, JobKind, PoolSpec, WorkerConfig

MAX_DELAY_MS = 600_000


def validate(args: dict[str, Any]) -> dict[str, Any]:
    delay = args.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY_MS:
        raise InvalidArgs(f"delay_ms must be a number from 0 to {MAX_DELAY_MS}")
    return args


class Echo:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        delay = args.get("delay_ms", 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        return args


KIND = JobKind(
    name="echo",
    actor_name="echo",
    description="Returns its args as given, after delay_ms milliseconds (optional).",
    schema={
        "type": "object",
        "properties": {"delay_ms": {"type": "number", "minimum": 0, "maximum": MAX_DELAY_MS}},
        "additionalProperties": True,
    },
    validate=validate,
    worker=Echo,
    pool=PoolSpec(size=1, num_cpus=None, max_concurrency=1000),
    optional=True,
    example={"hello": "world", "delay_ms": 100},
    batch=BatchSpec(max_size=256, max_wait_ms=2),  # 2 ms of gathering while busy: 1 x 64 +26% (NOTES.md)
)
