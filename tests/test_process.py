"""`python -m server` as users run it: banner, embedded Ray with its dashboard, clean exit."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import Client, free_port, run
from tests.processes import ROOT, server_process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_server_prints_its_urls_serves_and_leaves_no_process_behind(sig: int, tmp_path: Path) -> None:
    port, dashboard = free_port(), free_port()
    process = server_process("--port", str(port), "--dashboard-port", str(dashboard), "--enable-echo",
                             "--data-dir", str(tmp_path), "--pools", "audio.length=0,euro.results=0,echo=1",
                             "--ray-num-cpus", "1", "--object-store-mb", "100")
    try:
        page = process.wait_for_line(lambda line: line.startswith("Page:"))
        socket_line = process.wait_for_line(lambda line: line.startswith("Socket:"))
        dashboard_line = process.wait_for_line(lambda line: line.startswith("Dashboard:"))
        assert f"http://127.0.0.1:{port}/" in page
        assert f"ws://127.0.0.1:{port}/ws" in socket_line
        assert f"http://127.0.0.1:{dashboard}" in dashboard_line
        assert ".ray/auth_token" in dashboard_line

        async def scenario() -> dict[str, object]:
            async with await Client.connect(f"ws://127.0.0.1:{port}/ws") as client:
                job = await client.submit("echo", {"hi": 1})
                return await client.result(job)

        assert run(scenario())["result"] == {"hi": 1}
        children = process.descendants()
        assert any("raylet" in " ".join(child.cmdline()) for child in children), "embedded Ray runs under the server"
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
