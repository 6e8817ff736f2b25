"""Joining a Ray 2.60 cluster that asks for a token (`ray start --head` with RAY_AUTH_MODE=token), as documented."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bench.servers import free_port, ray_cluster
from tests.helpers import Client, run
from tests.processes import ROOT, environment, server_process

pytestmark = pytest.mark.cluster

@dataclass(frozen=True)
class SecuredHead:
    address: str
    dashboard: str
    token: str


@pytest.fixture(scope="module")
def secured_head() -> Iterator[SecuredHead]:
    """A cluster in token mode (a head with its dashboard and one worker) on loopback; stopped by its pid."""
    token = secrets.token_hex(32)
    dashboard = free_port()
    with ray_cluster("1", "1", "--dashboard-port", str(dashboard),
                     env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": None}) as nodes:
        yield SecuredHead(nodes["address"], f"127.0.0.1:{dashboard}", token)


def without_tokens(home: Path, **extra: str) -> dict[str, str | None]:
    """The changes that make a machine hold no Ray token and no auth setting (an empty home), plus `extra`."""
    unset: dict[str, str | None] = {name: None for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    return {**unset, "HOME": str(home), **extra}


def refused(head: SecuredHead, env: dict[str, str | None], data_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "server", "--port", "0", "--data-dir", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=environment({**env, "RAY_ADDRESS": head.address}))
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "raylet" not in done.stdout and "Traceback" not in done.stderr
    return line


def test_no_token_is_one_line_saying_what_to_set(secured_head: SecuredHead, tmp_path: Path) -> None:
    line = refused(secured_head, without_tokens(tmp_path), tmp_path)
    assert line == (f"error: the Ray cluster at {secured_head.address} (RAY_ADDRESS) requires a token: set "
                    f"RAY_AUTH_TOKEN, or copy the head's ~/.ray/auth_token to {tmp_path}/.ray/auth_token "
                    f"(or to RAY_AUTH_TOKEN_PATH)")


def test_a_wrong_token_is_one_line_naming_where_it_came_from(secured_head: SecuredHead, tmp_path: Path) -> None:
    line = refused(secured_head, without_tokens(tmp_path, RAY_AUTH_TOKEN=secrets.token_hex(32)), tmp_path)
    assert line.startswith(f"error: the Ray cluster at {secured_head.address} (RAY_ADDRESS) refused the token from "
                           f"RAY_AUTH_TOKEN")
    assert secured_head.token not in line


def test_token_mode_turned_off_by_hand_is_one_line(secured_head: SecuredHead, tmp_path: Path) -> None:
    env = without_tokens(tmp_path, RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN=secured_head.token)
    assert refused(secured_head, env, tmp_path).endswith("RAY_AUTH_MODE=disabled: set RAY_AUTH_MODE=token and give "
                                                         "it the head's token")


def test_the_heads_token_file_joins_with_no_other_setting(secured_head: SecuredHead, tmp_path: Path) -> None:
    """The head's token copied to ~/.ray/auth_token is all it takes: the server turns token mode on itself, runs
    jobs on the cluster, and shows the cluster's dashboard in its banner and to the page."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secured_head.token)
    port = free_port()
    server = server_process("--port", str(port), "--enable-echo", "--data-dir", str(tmp_path / "data"),
                            "--actor-cpus", "0.25", "--pools", "audio.length=0,audio.speech=0,euro.results=0,echo=1",
                            env={**without_tokens(home), "RAY_ADDRESS": secured_head.address})
    try:
        dashboard = server.wait_for_line(lambda line: line.startswith("Dashboard:"), timeout=120)
        assert f"http://{secured_head.dashboard}" in dashboard
        assert f"`cat {home}/.ray/auth_token`" in dashboard

        async def scenario() -> dict[str, object]:
            async with await Client.connect(f"ws://127.0.0.1:{port}/ws") as client:
                return await client.result(await client.submit("echo", {"secured": True}))

        assert run(scenario(), timeout=120)["result"] == {"secured": True}
        page = requests.get(f"http://127.0.0.1:{port}/config.json", timeout=10).json()
        assert page["dashboard_url"] == f"http://{secured_head.dashboard}"
        assert server.stop() == 0
    finally:
        if server.popen.poll() is None:
            server.kill()
