"""A Ray cluster over several hosts (network namespaces on this machine), losing its worker host under load.

Hosts, all in 198.18.0.0/24 (tests/netns.py): `head` (Ray head, 1 CPU), `worker` (Ray worker, 1 CPU), `srv1` and
`srv2` (each a Ray node with no CPUs, so no actors, and a server; Redis runs on srv1). The cluster asks for a
token, which the servers find in RAY_AUTH_TOKEN. The tests reach the servers over the bridge (198.18.0.254).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import pytest
import requests

from bench.servers import Process, listening
from tests.helpers import Client, run, wait_until
from tests.netns import Hosts, NamespacesRefused, temp_dir

pytestmark = pytest.mark.cluster

RAY = shutil.which("ray", path=str(sys.executable.rsplit("/", 1)[0])) or "ray"
RAY_PORT = 6379
REDIS_PORT = 6390
SERVER_PORT = 8000
MiB = 1024 * 1024
# A lost node is declared dead after about 1.5 s without answers, instead of Ray's default of about half a minute.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                   "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


@dataclass
class Site:
    hosts: Hosts
    token: str
    nodes: dict[str, str]  # host name -> Ray node id
    servers: dict[str, Process]

    def url(self, host: str, path: str = "/ws") -> str:
        scheme = "ws" if path == "/ws" else "http"
        return f"{scheme}://{self.hosts[host].address}:{SERVER_PORT}{path}"


def node_id_on(hosts: Hosts, host: str) -> str | None:
    """The node id of the raylet running on `host`, from its own command line; None before there is one."""
    for pid in hosts[host].pids():
        try:
            process = psutil.Process(pid)
            arguments = process.cmdline() if process.name() == "raylet" else []
        except psutil.Error:
            continue
        for argument in arguments:  # none yet while the raylet is being started
            if argument.startswith("--node_id="):
                return argument.split("=", 1)[1]
    return None


def wait_for_port(address: str, port: int, timeout: float = 120) -> None:
    assert wait_until(partial(listening, address, port), timeout=timeout), f"nothing answers on {address}:{port}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    token = secrets.token_hex(32)
    try:
        hosts = Hosts(["head", "worker", "srv1", "srv2"]).__enter__()
    except NamespacesRefused as exc:
        pytest.skip(f"the multi-host test needs network namespaces, which this machine refuses: {exc}")
    base = temp_dir(hosts.tag)
    try:
        # Ray's own processes on these hosts must not take 127.0.0.1 for their address (tests/conftest.py asks
        # that of the tests' other clusters); each is given its host's address.
        ray_env: dict[str, str | None] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None, "RAY_AUTH_MODE": "token",
                                          "RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": None, **FAST_NODE_DEATH}
        common = ["--block", "--object-store-memory", str(100 * MiB), "--disable-usage-stats"]
        head = hosts["head"].address
        hosts.run("head", [RAY, "start", "--head", "--port", str(RAY_PORT), "--node-ip-address", head,
                           "--num-cpus", "1", "--include-dashboard", "false", "--temp-dir", str(base / "head"),
                           *common], env=ray_env)
        wait_for_port(head, RAY_PORT)
        for name, cpus in (("worker", "1"), ("srv1", "0"), ("srv2", "0")):
            hosts.run(name, [RAY, "start", "--address", f"{head}:{RAY_PORT}", "--node-ip-address",
                             hosts[name].address, "--num-cpus", cpus, "--temp-dir", str(base / name), *common],
                      env=ray_env)
        redis_path = shutil.which("redis-server") or "redis-server"
        password = secrets.token_hex(16)  # Redis takes connections from other hosts only with one
        hosts.run("srv1", [redis_path, "--port", str(REDIS_PORT), "--bind", hosts["srv1"].address, "--save", "",
                           "--appendonly", "no", "--dir", str(base), "--requirepass", password])
        wait_for_port(hosts["srv1"].address, REDIS_PORT)
        nodes = {}
        for name in ("head", "worker", "srv1", "srv2"):
            assert wait_until(partial(node_id_on, hosts, name), timeout=120), f"no raylet on {name}"
            nodes[name] = str(node_id_on(hosts, name))
        store = f"redis://:{password}@{hosts['srv1'].address}:{REDIS_PORT}/0"
        for name in ("srv1", "srv2"):
            address = hosts[name].address
            hosts.run(name, [sys.executable, "-m", "server", "--host", address, "--port", str(SERVER_PORT),
                             "--ray-node-ip", address, "--server-id", name, "--store", store,
                             "--data-dir", str(base / f"data-{name}"), "--enable-echo", "--actor-cpus", "0.25",
                             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=2", "--lease-ttl", "3",
                             "--euro-url", "http://127.0.0.1:9/"],
                      env={**ray_env, "RAY_ADDRESS": f"{head}:{RAY_PORT}"})
        servers = dict(zip(("srv1", "srv2"), hosts.processes[-2:], strict=True))
        for process in servers.values():
            process.wait_for_line(lambda line: line.startswith("Socket:"), timeout=180)
        yield Site(hosts, token, nodes, servers)
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


def actor_nodes(site: Site, host: str) -> list[str | None]:
    pools = requests.get(site.url(host, "/pools"), timeout=10).json()["pools"]
    return [actor["node_id"] for pool in pools for actor in pool["actors"]]


def all_actors(site: Site) -> list[str | None]:
    return actor_nodes(site, "srv1") + actor_nodes(site, "srv2")


def test_actors_spread_over_both_ray_hosts_and_never_on_a_server_host(site: Site) -> None:
    assert wait_until(lambda: None not in all_actors(site), timeout=120), "every actor started"
    placed = all_actors(site)
    assert len(placed) == 4
    assert set(placed) == {site.nodes["head"], site.nodes["worker"]}, "SPREAD puts actors on both Ray hosts"


def test_losing_the_worker_host_under_load_loses_no_job_and_each_watcher_gets_one_result(site: Site) -> None:
    """Jobs submitted on both servers, each watched from the other; mid-run the worker host's cable is pulled
    and its processes killed. Every job succeeds once, every socket gets exactly one result per job, and the pools
    heal to their size on the hosts that remain."""
    count = 40
    assert wait_until(lambda: set(all_actors(site)) == {site.nodes["head"], site.nodes["worker"]}, timeout=120)

    async def scenario() -> tuple[dict[str, Counter[str]], dict[str, list[dict[str, Any]]]]:
        async with await Client.connect(site.url("srv1")) as one, await Client.connect(site.url("srv2")) as two:
            clients = {"srv1": one, "srv2": two}
            jobs: dict[str, list[str]] = {"srv1": [], "srv2": []}
            for n in range(count):
                for name, client in clients.items():
                    jobs[name].append(await client.submit("echo", {"n": n, "on": name, "delay_ms": 1500}))
            await one.send({"op": "watch", "jobs": jobs["srv2"]})
            await two.send({"op": "watch", "jobs": jobs["srv1"]})
            await asyncio.sleep(0)  # hand the frames to the sockets before the host goes
            lose_the_worker(site)
            everything = jobs["srv1"] + jobs["srv2"]
            seen: dict[str, Counter[str]] = {name: Counter() for name in clients}
            results: dict[str, list[dict[str, Any]]] = {name: [] for name in clients}
            for name, client in clients.items():
                for job in everything:
                    frame = await client.result(job, timeout=120)
                    seen[name][job] += 1
                    results[name].append(frame)
                # Anything more for these jobs would be a second result: ping, and read up to the pong.
                await client.send({"op": "ping", "ref": "last"})
                while (frame := await client.recv(timeout=30))["type"] != "pong":
                    if frame["type"] == "result":
                        seen[name][frame["job"]] += 1
            return seen, results

    seen, results = run(scenario(), timeout=300)
    logs = [line for server in site.servers.values() for line in server.output]
    assert any("running it again" in line for line in logs), "jobs were running on the worker when it went"
    for name in ("srv1", "srv2"):
        assert len(seen[name]) == 2 * count and set(seen[name].values()) == {1}, f"{name}: one result per job"
        assert all(frame["status"] == "succeeded" for frame in results[name]), results[name]

    def healed() -> bool:
        placed = all_actors(site)
        return len(placed) == 4 and set(placed) == {site.nodes["head"]}
    assert wait_until(healed, timeout=120), f"not healed: {all_actors(site)}"


def test_losing_a_server_host_hands_its_jobs_to_the_other_server(site: Site) -> None:
    """srv2 takes jobs, then its host is cut off and its processes (server and Ray node) killed: srv1 adopts the
    unfinished jobs once srv2's lease runs out, runs them, and a socket on srv1 watching them gets one result each.
    (Last in this module: srv2 stays lost.)"""
    count = 10

    async def scenario() -> Counter[str]:
        async with await Client.connect(site.url("srv2")) as doomed, \
                await Client.connect(site.url("srv1")) as watcher:
            jobs = [await doomed.submit("echo", {"n": n, "delay_ms": 3000}) for n in range(count)]
            await watcher.send({"op": "watch", "jobs": jobs})
            await watcher.send({"op": "ping", "ref": "watching"})
            await watcher.recv_until(lambda frame: frame["type"] == "pong")  # the watch is in place on srv1
            site.hosts.cut("srv2")
            assert site.hosts.kill("srv2") > 0
            seen: Counter[str] = Counter()
            for job in jobs:
                frame = await watcher.result(job, timeout=120)
                assert frame["status"] == "succeeded" and frame["result"]["n"] == jobs.index(job), frame
                seen[job] += 1
            await watcher.send({"op": "ping", "ref": "last"})
            while (frame := await watcher.recv(timeout=30))["type"] != "pong":
                if frame["type"] == "result":
                    seen[frame["job"]] += 1
            return seen

    seen = run(scenario(), timeout=240)
    assert len(seen) == count and set(seen.values()) == {1}, seen
    assert any("adopted" in line for line in site.servers["srv1"].output), "srv1 ran srv2's jobs"


def lose_the_worker(site: Site) -> None:
    site.hosts.cut("worker")
    assert site.hosts.kill("worker") > 0
