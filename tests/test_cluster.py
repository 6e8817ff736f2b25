"""The server as a separate process joining a real Ray cluster of a head and two worker nodes."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import requests

from tests.helpers import Client, free_port, run
from tests.processes import Process, server_process

pytestmark = pytest.mark.cluster


def test_actors_run_on_worker_nodes_and_results_come_back(tmp_path: Any) -> None:
    cluster = Process([sys.executable, "-m", "tests.cluster_nodes"])
    server: Process | None = None
    try:
        info = json.loads(cluster.wait_for_line(lambda line: line.startswith("{"), timeout=180))
        port = free_port()
        server = server_process(
            "--port", str(port), "--enable-echo", "--data-dir", str(tmp_path), "--actor-cpus", "0.5",
            "--pools", "audio.length=0,euro.results=0,echo=3",
            env={"RAY_ADDRESS": info["address"]},
        )
        server.wait_for_line(lambda line: line.startswith("Socket:"), timeout=180)

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
        assert set(nodes) <= set(info["workers"]), "every actor runs on a worker node"
        assert info["head"] not in nodes
        assert len(set(nodes)) == 2, "three half-CPU actors do not fit on one one-CPU worker"
        assert server.stop() == 0
    finally:
        if server is not None and server.popen.poll() is None:
            server.kill()
        assert cluster.popen.stdin is not None
        cluster.popen.stdin.close()
        try:
            cluster.popen.wait(90)
        except Exception:
            cluster.kill()
            raise
