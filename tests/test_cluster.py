"""Servers as separate processes joining a real Ray cluster of a head and two worker nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from bench.servers import free_port, ray_cluster
from tests.helpers import Client, run
from tests.processes import Process, server_process

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with ray_cluster() as nodes:
        yield nodes


def start_server(cluster: dict[str, Any], data_dir: Path, *flags: str) -> tuple[Process, int]:
    port = free_port()
    server = server_process("--port", str(port), "--enable-echo", "--data-dir", str(data_dir), *flags,
                            env={"RAY_ADDRESS": cluster["address"]})
    server.wait_for_line(lambda line: line.startswith("Socket:"), timeout=180)
    return server, port


def stop(server: Process) -> None:
    if server.popen.poll() is None:
        assert server.stop() == 0


def test_actors_run_on_worker_nodes_and_results_come_back(cluster: dict[str, Any], tmp_path: Path) -> None:
    server, port = start_server(cluster, tmp_path, "--actor-cpus", "0.5",
                                "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=3")
    try:
        async def scenario() -> list[dict[str, Any]]:
            async with await Client.connect(f"ws://127.0.0.1:{port}/ws") as client:
                jobs = [await client.submit("echo", {"n": n, "delay_ms": 50}) for n in range(30)]
                return [await client.result(job) for job in jobs]

        results = run(scenario(), timeout=180)
        assert [frame["result"]["n"] for frame in results] == list(range(30))
        assert all(frame["status"] == "succeeded" for frame in results)

        pools = requests.get(f"http://127.0.0.1:{port}/pools", timeout=10).json()["pools"]
        nodes = [actor["node_id"] for pool in pools for actor in pool["actors"]]
        assert len(nodes) == 3
        assert set(nodes) <= set(cluster["workers"]), "every actor runs on a worker node"
        assert cluster["head"] not in nodes
        assert cluster["addresses"] == ["127.0.0.1"], "the test cluster stays on loopback"
        assert len(set(nodes)) == 2, "three half-CPU actors do not fit on one one-CPU worker"
    finally:
        stop(server)


def test_two_server_processes_share_the_cluster_and_a_redis_store(cluster: dict[str, Any], redis_url: str,
                                                                   tmp_path: Path) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    flags = ("--actor-cpus", "0.1", "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1",
             "--store", redis_url)
    first, port_a = start_server(cluster, tmp_path / "a", *flags, "--server-id", "a")
    try:
        second, port_b = start_server(cluster, tmp_path / "b", *flags, "--server-id", "b")
        try:
            async def scenario() -> None:
                async with await Client.connect(f"ws://127.0.0.1:{port_a}/ws") as on_a, \
                        await Client.connect(f"ws://127.0.0.1:{port_b}/ws") as on_b:
                    job = await on_a.submit("echo", {"via": "a", "delay_ms": 1500})
                    await on_b.send({"op": "watch", "jobs": [job]})
                    pushed = await on_b.result(job, timeout=60)
                    assert pushed["status"] == "succeeded" and pushed["result"]["via"] == "a"
                    back = await on_b.submit("echo", {"via": "b"})
                    await on_a.send(f"watch {back}")
                    assert (await on_a.result(back, timeout=60))["result"] == {"via": "b"}

            run(scenario(), timeout=120)
        finally:
            stop(second)
    finally:
        stop(first)
