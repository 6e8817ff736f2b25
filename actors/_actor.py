"""The one Ray actor class: it hosts a kind's plain worker and turns its outcome into plain data."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from actors._base import JobFailed, WorkerConfig

log = logging.getLogger("actors")


class KindActor:
    """Runs one kind's worker. Becomes a Ray actor with `ray.remote(KindActor)` where pools are built.

    `run` never raises for a job's own failure: it returns `{"ok": result}` or
    `{"error": {"code", "message"}}`, so the server can tell a failed job from a lost worker.
    """

    def __init__(self, kind_name: str, config: WorkerConfig) -> None:
        from actors import all_kinds

        self.kind = all_kinds()[kind_name]
        self.worker = self.kind.worker(config)
        self._is_async = inspect.iscoroutinefunction(self.worker.run)
        warmup = getattr(self.worker, "warmup", None)
        if warmup is not None:
            warmup()

    def node_id(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    async def run(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._is_async:
                value = await self.worker.run(args)
            else:
                value = await asyncio.to_thread(self.worker.run, args)
            return {"ok": value}
        except JobFailed as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s worker failed on %r", self.kind.name, args)
            return {"error": {"code": "internal", "message": "the worker failed unexpectedly; see the server log"}}
