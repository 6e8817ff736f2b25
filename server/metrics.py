"""What operators watch: Prometheus text on GET /metrics (and, through `raysetup.report_metrics`, the job and pool
series in Ray's own metrics, shown by Ray's dashboard and its Prometheus). Labels are kinds, statuses and named tenants
(every address tenant is `anonymous`), never job ids."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.jobs import Job
from server.tenants import ANONYMOUS, label

JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)

PoolStats = Callable[[], dict[str, tuple[int, int, int]]]  # kind -> (actors, queued, running)
Queued = Callable[[], dict[str, dict[str, int]]]  # kind -> tenant -> jobs queued


class _Live(Collector):
    """Gauges read at scrape time: the pools and the open sockets."""

    def __init__(self, pools: PoolStats, connections: Callable[[], int], queued: Queued) -> None:
        self.pools = pools
        self.connections = connections
        self.queued = queued

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(f"ami_pool_{name}", help_text, labels=["kind"]) for name, help_text in (
            ("actors", "actors in the kind's pool"), ("running", "jobs running on the pool's actors"))}
        queued = GaugeMetricFamily("ami_pool_queued", "jobs waiting for an actor, by tenant", labels=["kind", "tenant"])
        by_tenant = self.queued()
        for kind, (actors, _, running) in self.pools().items():
            families["actors"].add_metric([kind], actors)
            families["running"].add_metric([kind], running)
            counts: dict[str, int] = {ANONYMOUS: 0}
            for tenant, count in by_tenant.get(kind, {}).items():
                counts[label(tenant)] = counts.get(label(tenant), 0) + count
            for name, count in counts.items():
                queued.add_metric([kind, name], count)
        yield from families.values()
        yield queued
        yield GaugeMetricFamily("ami_connections", "open WebSocket connections", value=self.connections())


class Metrics:
    def __init__(self, pools: PoolStats, connections: Callable[[], int], queued: Queued) -> None:
        self.pools = pools
        self.registry = CollectorRegistry()
        self.jobs = Counter("ami_jobs", "jobs ended, by kind, status and tenant", ["kind", "status", "tenant"],
                            registry=self.registry)
        self.job_seconds = Histogram("ami_job_seconds", "submission to result", ["kind"], buckets=JOB_BUCKETS,
                                     registry=self.registry)
        self.frames = Counter("ami_frames", "WebSocket frames, by direction", ["direction"], registry=self.registry)
        self.frames_in = self.frames.labels("in")
        self.frames_out = self.frames.labels("out")
        self.refusals = Counter("ami_refusals", "connections and frames refused so that one client cannot crowd out "
                                "the others, by reason", ["reason"], registry=self.registry)
        self.store_seconds = Histogram("ami_store_seconds", "a job store write, from asking to durable",
                                       buckets=STORE_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("ami_batch_size", "jobs one actor call carried, by kind (kinds that batch)",
                                    ["kind"], buckets=BATCH_BUCKETS, registry=self.registry)
        self._batches: list[tuple[str, int]] | None = None  # batch sizes since Ray's metrics were last told
        self.registry.register(_Live(pools, connections, queued))
        self._for_ray: list[tuple[str, str, float]] | None = None  # jobs ended since Ray's metrics were last told

    def job_ended(self, job: Job) -> None:
        status = str(job.state)
        self.jobs.labels(job.kind, status, label(job.tenant)).inc()
        if job.finished_at is not None:
            seconds = max(job.finished_at - job.created_at, 0.0)
            self.job_seconds.labels(job.kind).observe(seconds)
            if self._for_ray is not None:  # handed to Ray in batches: a Ray metric call per job costs throughput
                self._for_ray.append((job.kind, status, seconds))

    def refused(self, reason: str) -> None:
        """rate_limited, flooding (a connection closed), too_many_connections or deadline (a request too slow)."""
        self.refusals.labels(reason).inc()

    def batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)
        if self._batches is not None:
            self._batches.append((kind, size))

    def batches_since(self) -> list[tuple[str, int]]:
        """The batch sizes since the last call, for Ray's metrics (kept from the first call)."""
        batches, self._batches = self._batches or [], []
        return batches

    def store_write(self, seconds: float) -> None:
        self.store_seconds.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def ended_since(self) -> list[tuple[str, str, float]]:
        """The jobs ended since the last call (kind, status, seconds), for Ray's metrics (kept from the first call)."""
        ended, self._for_ray = self._for_ray or [], []
        return ended
