"""Starting, joining and leaving Ray, without losing the server's signal handlers; the server's series in Ray's
metrics. The app's lifespan is the only caller: admission (`services.py`) never imports Ray."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import ray

import actors
from server.config import Settings
from server.metrics import BATCH_BUCKETS, JOB_BUCKETS, Metrics

log = logging.getLogger("server.ray")

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"
TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # where Ray looks for its token when no variable names one
PROCESSES_FILE = "ray-processes.json"  # in the data dir: the embedded Ray's pids, for the next start to reap
METRICS_EVERY = 5.0  # seconds between settings of Ray's pool gauges


@dataclass(frozen=True)
class RayInfo:
    owned: bool  # this process started Ray (embedded) or joined it, and must leave it
    dashboard_url: str | None
    address: str
    processes_file: Path | None = None  # where the embedded Ray's processes are recorded

    def connected(self) -> bool:
        """Whether the Ray this server uses is there (always, when it uses none: the tests' fake pools)."""
        return self.address == "none" or ray.is_initialized()


def no_ray(settings: Settings) -> RayInfo:
    """The server's Ray when the pools are not Ray's (the tests' fakes)."""
    return RayInfo(False, settings.dashboard_url, "none")


def keep_on_loopback() -> None:
    """Make the embedded Ray take 127.0.0.1 as its node's address, so that it listens on loopback only.

    Ray 2.60 ignores `_node_ip_address="127.0.0.1"` and registers the node under the machine's reachable address
    unless clusters are "disabled" (its switch for macOS and Windows): its processes read the variable when they
    import Ray, and this process, which has imported it already, reads the constant. Never when joining a cluster,
    whose other nodes must reach this one."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


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
            # The raylet on this machine to attach to. Ray's guess takes the route to the outside world, and
            # prefers the head when it sees several raylets (containers or namespaces sharing one process table).
            _node_ip_address=settings.ray_node_ip,
            # The cluster's nodes may not have this checkout: ship the job kinds with the job.
            runtime_env={"py_modules": [os.path.dirname(actors.__file__)]},
        )
    else:
        reap_orphans(settings.data_dir / PROCESSES_FILE)
        keep_on_loopback()
        context = ray.init(
            address="local",  # never attach to a stale cluster by accident
            _node_ip_address=LOOPBACK,  # an embedded Ray serves this process only: nothing of it on the network
            namespace=settings.ray_namespace,
            num_cpus=settings.ray_num_cpus or os.cpu_count() or 1,
            object_store_memory=settings.object_store_mb * MiB,
            include_dashboard=settings.dashboard,
            dashboard_host="127.0.0.1",
            dashboard_port=settings.dashboard_port,
            _metrics_export_port=settings.ray_metrics_port,  # pinned, for Prometheus; loopback like the rest
        )
    # ray.init installs its own SIGTERM handler, which would skip uvicorn's graceful shutdown.
    _restore(saved)
    dashboard = settings.dashboard_url or (f"http://{context.dashboard_url}" if context.dashboard_url else None)
    record = None if settings.ray_address else settings.data_dir / PROCESSES_FILE
    if record is not None:
        record_processes(record)
    try:
        yield RayInfo(True, dashboard, settings.ray_address or "embedded", record)
    finally:
        ray.shutdown()
        _restore(saved)
        if record is not None:
            kill_descendants()  # whatever Ray's own shutdown left running
            record.unlink(missing_ok=True)


def record_processes(path: Path) -> None:
    """Write down the processes this server started (its embedded Ray), by pid and start time.

    A server killed with SIGKILL cannot stop them; some of Ray's agents outlive it. The next start on
    the same data dir reaps exactly these, and never a process that merely reuses a pid.
    """
    mine = [{"pid": child.pid, "started": child.create_time()} for child in _descendants()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine))


def reap_orphans(path: Path) -> int:
    """Kill what an earlier server on this data dir recorded and left running; the count killed."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    found = []
    for entry in recorded:
        try:
            process = psutil.Process(int(entry["pid"]))
            if abs(process.create_time() - float(entry["started"])) < 0.01:
                process.kill()
                found.append(process)
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    psutil.wait_procs(found, timeout=10)
    if found:
        log.warning("stopped %d processes an earlier server left running", len(found))
    path.unlink(missing_ok=True)
    return len(found)


def kill_descendants() -> None:
    """Kill every process this one started and is still running (used once the server is done with them)."""
    children = _descendants()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10)


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _signal_handlers() -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(saved: dict[int, object]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def auth_token() -> tuple[str, str]:
    """The token Ray would send (RAY_AUTH_TOKEN, else RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) and where it
    comes from; ("", "") when there is none."""
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    token = AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=True)
    if not token:
        return "", ""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return token, "RAY_AUTH_TOKEN"
    return token, os.environ.get("RAY_AUTH_TOKEN_PATH") or str(TOKEN_FILE)


def dashboard_sign_in() -> str:
    """How to sign in to the dashboard of the Ray this process started or joined."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        return "no sign-in needed"
    _token, source = auth_token()
    if source == "RAY_AUTH_TOKEN":
        return "it asks for the cluster's token, this server's RAY_AUTH_TOKEN"
    return f"it asks for the token that `cat {source}` prints"


async def record_once_ready(ready: Callable[[], Awaitable[None]], path: Path) -> None:
    """Ray starts more processes (workers, agents) as the pools come up: record them too."""
    await ready()
    await asyncio.to_thread(record_processes, path)


async def report_metrics(metrics: Metrics) -> None:
    """The server's job and pool series in Ray's metrics, the pool gauges set again every METRICS_EVERY seconds."""
    from ray.util import metrics as ray_metrics

    try:
        series = {
            "jobs": ray_metrics.Counter("ami_jobs_total", "jobs ended", tag_keys=("kind", "status")),
            "seconds": ray_metrics.Histogram("ami_job_seconds", "submission to result", boundaries=list(JOB_BUCKETS),
                                             tag_keys=("kind",)),
            "actors": ray_metrics.Gauge("ami_pool_actors", "actors in the pool", tag_keys=("kind",)),
            "queued": ray_metrics.Gauge("ami_pool_queued", "jobs waiting", tag_keys=("kind",)),
            "running": ray_metrics.Gauge("ami_pool_running", "jobs running", tag_keys=("kind",)),
            "batch": ray_metrics.Histogram("ami_batch_size", "jobs one actor call carried",
                                           boundaries=list(BATCH_BUCKETS), tag_keys=("kind",)),
        }
    except Exception:  # metrics are for operators: their failure must never stop the service
        log.exception("Ray's metrics are not available; /metrics still is")
        return
    while True:
        ended, pools, batches = metrics.ended_since(), metrics.pools(), metrics.batches_since()
        try:  # in a thread: thousands of Ray metric calls must not hold up the event loop
            await asyncio.to_thread(_tell_ray, series, ended, pools, batches)
        except Exception:
            log.exception("Ray's metrics could not be updated")
        await asyncio.sleep(METRICS_EVERY)


def _tell_ray(series: dict[str, Any], ended: list[tuple[str, str, float]],
              pools: dict[str, tuple[int, int, int]], batches: list[tuple[str, int]]) -> None:
    for kind, size in batches:
        series["batch"].observe(size, tags={"kind": kind})
    counts: dict[tuple[str, str], int] = {}
    for kind, status, seconds in ended:
        counts[kind, status] = counts.get((kind, status), 0) + 1
        series["seconds"].observe(seconds, tags={"kind": kind})
    for (kind, status), count in counts.items():
        series["jobs"].inc(count, tags={"kind": kind, "status": status})
    for kind, (size, queued, running) in pools.items():
        series["actors"].set(size, tags={"kind": kind})
        series["queued"].set(queued, tags={"kind": kind})
        series["running"].set(running, tags={"kind": kind})
