"""Processes the benchmarks start and stop by their own pid: the product server and redis-server."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(self.port), *flags], cwd=ROOT,
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_listening(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError("the server exited during start-up")
            if line.startswith("Socket:"):
                return

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return int(psutil.Process(self.popen.pid).memory_info().rss)

    def stop(self) -> None:
        children = psutil.Process(self.popen.pid).children(recursive=True)
        self.popen.terminate()
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
        for child in children:
            if child.is_running():
                child.kill()


@contextmanager
def server(*flags: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    process = ServerProcess(*flags, env=env)
    try:
        process.wait_listening()
        yield process
    finally:
        process.stop()


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped by its pid on the way out (benchmarks and tests)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; `make test` and `make bench` install it")
    port = free_port()
    popen = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        popen.terminate()
        popen.wait(30)
