"""`python -m server` as users run it: banner, embedded Ray with its dashboard, clean exit."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

import ami
from bench.servers import free_port
from bench.silent import SilentClient
from tests.helpers import Client, run
from tests.processes import ROOT, server_process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_server_prints_its_urls_serves_and_leaves_no_process_behind(sig: int, tmp_path: Path) -> None:
    port, dashboard = free_port(), free_port()
    process = server_process("--port", str(port), "--dashboard-port", str(dashboard), "--enable-echo",
                             "--data-dir", str(tmp_path),
                             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1",
                             "--ray-num-cpus", "1", "--object-store-mb", "100")
    try:
        page = process.wait_for_line(lambda line: line.startswith("Page:"))
        socket_line = process.wait_for_line(lambda line: line.startswith("Socket:"))
        dashboard_line = process.wait_for_line(lambda line: line.startswith("Dashboard:"))
        assert f"http://127.0.0.1:{port}/" in page
        assert f"ws://127.0.0.1:{port}/ws" in socket_line
        assert f"http://127.0.0.1:{dashboard}" in dashboard_line
        assert ".ray/auth_token" in dashboard_line
        sockets_line = process.wait_for_line(lambda line: line.startswith("Sockets:"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert f"open-file limit {hard:,})" in sockets_line, "the soft limit was raised to the hard one"

        async def scenario() -> dict[str, object]:
            async with await Client.connect(f"ws://127.0.0.1:{port}/ws") as client:
                job = await client.submit("echo", {"hi": 1})
                return await client.result(job)

        assert run(scenario())["result"] == {"hi": 1}
        children = process.descendants()
        [raylet] = [child.cmdline() for child in children if child.name() == "raylet"]
        assert "--node_ip_address=127.0.0.1" in raylet, "the embedded Ray stays on loopback"
        assert process.stop(sig) == 0
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"left behind: {[p.pid for p in alive]}"
        assert any("Application shutdown complete" in line for line in process.output)
    finally:
        if process.popen.poll() is None:
            process.kill()


def test_a_bad_setting_is_one_clear_line_and_a_non_zero_exit() -> None:
    done = subprocess.run([sys.executable, "-m", "server", "--port", "eighty"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --port: cannot use 'eighty' (TCP port to listen on)"]


def test_jobs_accepted_before_a_sigkill_finish_after_the_restart(tmp_path: Path) -> None:
    port = free_port()
    flags = ("--port", str(port), "--enable-echo", "--data-dir", str(tmp_path), "--server-id", "crashy",
             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1", "--no-dashboard", "--ray-num-cpus", "1",
             "--object-store-mb", "100")
    first = server_process(*flags)
    try:
        first.wait_for_line(lambda line: line.startswith("Socket:"))

        async def load() -> tuple[list[str], list[str]]:
            async with await Client.connect(f"ws://127.0.0.1:{port}/ws") as client:
                quick = [await client.submit("echo", {"n": n}) for n in range(10)]
                for job in quick:
                    await client.result(job)
                slow = [await client.submit("echo", {"n": 100 + n, "delay_ms": 4000}) for n in range(30)]
                return quick, slow

        quick, slow = run(load())
        children = first.descendants()
        first.popen.kill()  # SIGKILL: no shutdown of any kind
        first.popen.wait(30)
    finally:
        if first.popen.poll() is None:
            first.kill()

    second = server_process(*flags)
    try:
        second.wait_for_line(lambda line: line.startswith("Socket:"))
        assert any("resubmitted 30 jobs" in line for line in second.output)
        _gone, orphans = psutil.wait_procs(children, timeout=30)
        assert orphans == [], f"the restart left the killed server's processes running: {orphans}"

        async def resume() -> dict[str, dict[str, object]]:
            async with ami.Client(f"ws://127.0.0.1:{port}/ws") as client:
                await client.watch(quick + slow)
                results = await asyncio.gather(*(client.result(job) for job in quick + slow))
                return {result.job: result.frame for result in results}

        frames = run(resume(), timeout=180)
        assert set(frames) == set(quick + slow)
        assert all(frame["status"] == "succeeded" for frame in frames.values())
        assert sorted(frame["result"]["n"] for frame in frames.values()) == [*range(10), *range(100, 130)]  # type: ignore[index]
        assert second.stop() == 0
    finally:
        if second.popen.poll() is None:
            second.kill()
        for child in children:  # the first server's Ray, by the pids it started, whatever the test found
            if child.is_running():
                child.kill()


def test_a_stuck_request_does_not_stop_the_server_from_stopping(tmp_path: Path) -> None:
    port = free_port()
    process = server_process("--port", str(port), "--enable-echo", "--data-dir", str(tmp_path),
                             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1", "--no-dashboard",
                             "--ray-num-cpus", "1", "--object-store-mb", "100", "--shutdown-timeout", "2")
    stuck = socket.socket()
    try:
        process.wait_for_line(lambda line: line.startswith("Socket:"))
        children = process.descendants()
        stuck.connect(("127.0.0.1", port))  # a body announced and never sent: the request never ends
        stuck.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
        silent = websocket_that_never_closes(port)
        assert process.stop(signal.SIGTERM, timeout=90) == 0
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"left behind: {[p.pid for p in alive]}"
        assert any("timeout graceful shutdown exceeded" in line for line in process.output)
        silent.close()
    finally:
        stuck.close()
        if process.popen.poll() is None:
            process.kill()


def websocket_that_never_closes(port: int) -> SilentClient:
    client = SilentClient(f"ws://127.0.0.1:{port}/ws")
    client.send("ping")
    return client


@pytest.mark.parametrize(("flags", "env", "line"), [
    (("--log-level", "loud"), {}, "error: AMI_LOG_LEVEL must be one of critical, error, warning, info, debug"),
    (("--store", "redis://:s3cret@127.0.0.1:{free}/0"), {},
     "error: cannot reach the job store at redis://:***@127.0.0.1:{free}/0 (AMI_STORE): "),
    ((), {"RAY_ADDRESS": "127.0.0.1:{free}"},
     "error: cannot reach the Ray cluster at 127.0.0.1:{free} (RAY_ADDRESS): "),
    (("--port", "{busy}"), {}, "error: cannot listen on 127.0.0.1:{busy} (AMI_HOST, AMI_PORT): "),
], ids=["log-level", "redis", "ray", "busy-port"])
def test_a_server_that_cannot_run_says_why_in_one_line_before_ray_starts(
        flags: tuple[str, ...], env: dict[str, str], line: str, tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    values = {"free": str(free_port()), "busy": str(busy.getsockname()[1])}
    try:
        done = subprocess.run([sys.executable, "-m", "server", "--data-dir", str(tmp_path),
                               *(flag.format(**values) for flag in flags)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, **{k: v.format(**values) for k, v in env.items()}})
    finally:
        busy.close()
    assert done.returncode == 2
    [printed] = done.stderr.strip().splitlines()
    assert printed.startswith(line.format(**values)), printed
    assert "raylet" not in done.stdout + done.stderr and not (tmp_path / "ray-processes.json").exists()


def test_a_busy_dashboard_port_moves_to_a_free_one(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = free_port()
    process = server_process("--port", str(port), "--dashboard-port", str(taken.getsockname()[1]),
                             "--data-dir", str(tmp_path), "--pools", "audio.length=0,audio.speech=0,euro.results=0",
                             "--ray-num-cpus", "1", "--object-store-mb", "100")
    try:
        line = process.wait_for_line(lambda text: text.startswith("Dashboard:"))
        moved = int(line.split("http://127.0.0.1:")[1].split()[0].rstrip("/"))
        assert moved != taken.getsockname()[1]
        assert process.stop() == 0
    finally:
        taken.close()
        if process.popen.poll() is None:
            process.kill()


def test_nothing_of_the_embedded_ray_listens_beyond_loopback(tmp_path: Path) -> None:
    """Every listening socket of the server's process tree (uvicorn, GCS, raylet, object manager, workers, agents,
    metrics export, dashboard) is on loopback, without the switch the tests set for their own Ray."""
    port, metrics = free_port(), free_port()
    process = server_process("--port", str(port), "--enable-echo", "--data-dir", str(tmp_path),
                             "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1", "--ray-num-cpus", "1",
                             "--object-store-mb", "100", "--ray-metrics-port", str(metrics),
                             env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None})
    try:
        process.wait_for_line(lambda line: line.startswith("Socket:"))
        banner = process.wait_for_line(lambda line: line.startswith("Metrics:"))
        assert f"http://127.0.0.1:{metrics}/metrics" in banner
        assert run(first_echo(f"ws://127.0.0.1:{port}/ws")) == {"n": 1}  # the actors and their workers are up
        tree = [psutil.Process(process.popen.pid), *psutil.Process(process.popen.pid).children(recursive=True)]
        listening: dict[tuple[str, int], str] = {}
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening[(conn.laddr.ip, conn.laddr.port)] = " ".join(proc.cmdline()[:2])[:100]
        assert len(listening) >= 5, listening  # uvicorn, the GCS, the raylet, its object manager, the dashboard...
        outside = {address: who for address, who in listening.items() if not loopback(address[0])}
        assert outside == {}, f"listening beyond loopback: {outside}"
        assert any(at == metrics for _, at in listening), "Ray's metrics export is on the pinned port"
        exported = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=30).text
        assert "ray_" in exported, "Prometheus text from Ray's metrics agent"
    finally:
        process.stop()


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback  # Ray's gRPC listens on IPv6 sockets bound to ::ffff:127.0.0.1


async def first_echo(url: str) -> object:
    async with ami.Client(url) as client:
        return (await client.submit("echo", {"n": 1})).result
