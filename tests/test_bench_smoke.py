"""A smoke run of the benchmark load generator on a handful of jobs (the benchmarks themselves: make bench)."""

from __future__ import annotations

from bench.loadgen import run_load
from tests.helpers import ServerThread, run


def test_load_generator_counts_every_job_and_its_latency(server: ServerThread) -> None:
    result = run(run_load(server.ws_url, connections=3, in_flight=4, jobs_per_connection=10, args={"x": 1}))
    assert (result.jobs, result.errors) == (30, 0)
    assert len(result.latencies_ms) == 30 and all(latency > 0 for latency in result.latencies_ms)
    assert result.rate > 0 and result.p50 <= result.p99


def test_load_generator_counts_refused_jobs_as_errors(server: ServerThread) -> None:
    result = run(run_load(server.ws_url, connections=1, in_flight=2, jobs_per_connection=4, kind="no.such.kind"))
    assert (result.jobs, result.errors) == (0, 4)
