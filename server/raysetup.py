"""Starting, joining and leaving Ray, without losing the server's signal handlers."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray

import actors
from server.config import Settings

log = logging.getLogger("server.ray")

MiB = 1024 * 1024
TOKEN_FILE = Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class RayInfo:
    owned: bool  # this process started Ray (embedded) or joined it, and must leave it
    dashboard_url: str | None
    address: str


@contextmanager
def ray_session(settings: Settings) -> Iterator[RayInfo]:
    """Embedded local Ray, the cluster at RAY_ADDRESS, or the Ray this process already runs (tests)."""
    if ray.is_initialized():
        yield RayInfo(False, settings.dashboard_url, "existing")
        return
    saved = _signal_handlers()
    if settings.ray_address:
        context = ray.init(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            # The cluster's nodes may not have this checkout: ship the job kinds with the job.
            runtime_env={"py_modules": [os.path.dirname(actors.__file__)]},
        )
    else:
        context = ray.init(
            address="local",  # never attach to a stale cluster by accident
            namespace=settings.ray_namespace,
            num_cpus=settings.ray_num_cpus or os.cpu_count() or 1,
            object_store_memory=settings.object_store_mb * MiB,
            include_dashboard=settings.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=settings.dashboard_port,
        )
    # ray.init installs its own SIGTERM handler, which would skip uvicorn's graceful shutdown.
    _restore(saved)
    dashboard = settings.dashboard_url or (f"http://{context.dashboard_url}" if context.dashboard_url else None)
    try:
        yield RayInfo(True, dashboard, settings.ray_address or "embedded")
    finally:
        ray.shutdown()
        _restore(saved)


def _signal_handlers() -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(saved: dict[int, object]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def dashboard_sign_in() -> str:
    if TOKEN_FILE.exists():
        return f"it asks for the token that `cat {TOKEN_FILE}` prints"
    return "no sign-in needed"
