"""Processes the benchmarks and tests start and stop by their own pid: the server, redis-server, others."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def keep_ray_on_loopback() -> None:
    """Make every Ray this process and its children start or join take 127.0.0.1 as its node's address.

    Ray takes a node's address from the route to the outside world (this machine's 192.0.2.2), even for a cluster
    whose head was given 127.0.0.1; with this switch off (its name is Ray's) the tests' and benchmarks' clusters and
    drivers stay on loopback."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(changes: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with `changes` made: a value of None removes the variable."""
    merged: dict[str, str | None] = {**os.environ, **(changes or {})}
    return {key: value for key, value in merged.items() if value is not None}


class Process:
    """A child process whose output lines can be awaited with a timeout; stopped by its own pid."""

    def __init__(self, args: list[str], env: Mapping[str, str | None] | None = None) -> None:
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env=environment(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 120) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no matching line within {timeout} s; output:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"process ended ({self.popen.poll()}); output:\n{''.join(self.output)}")
            if predicate(line):
                return line

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        for child in self.descendants():
            child.kill()
        self.popen.kill()
        self.popen.wait(30)


class ServerProcess(Process):
    """`python -m server` on a free port, for the benchmarks."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.started = time.perf_counter()
        super().__init__([sys.executable, "-m", "server", "--port", str(self.port), *flags], env=env)

    def wait_listening(self, timeout: float = 120) -> None:
        self.wait_for_line(lambda line: line.startswith("Socket:"), timeout)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        return int(psutil.Process(self.popen.pid).memory_info().rss)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server, then whatever of its Ray it left running (the tests check it leaves none)."""
        children = self.descendants()
        try:
            return super().stop(sig, timeout)
        finally:
            for child in children:
                if child.is_running():
                    child.kill()


class MinimalProcess(Process):
    """`bench.minimal_app` on a free port: the smallest Starlette WebSocket app, beside the product."""

    def __init__(self, ws: str) -> None:
        self.port = free_port()
        super().__init__([sys.executable, "-m", "bench.minimal_app", str(self.port), ws])

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if self.popen.poll() is not None:
                raise AssertionError(f"the minimal app exited; output:\n{''.join(self.output)}")
            time.sleep(0.05)  # polling a port that is not open yet: nothing to wait on
        raise AssertionError("the minimal app did not listen in time")

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss(self) -> int:
        return int(psutil.Process(self.popen.pid).memory_info().rss)


@contextmanager
def minimal_app(ws: str) -> Iterator[MinimalProcess]:
    process = MinimalProcess(ws)
    try:
        process.wait_listening()
        yield process
    finally:
        process.stop()


@contextmanager
def server(*flags: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    process = ServerProcess(*flags, env=env)
    try:
        process.wait_listening()
        yield process
    finally:
        process.stop()


@contextmanager
def ray_cluster(*args: str, env: Mapping[str, str | None] | None = None) -> Iterator[dict[str, Any]]:
    """`python -m bench.cluster ARGS` (a Ray cluster on loopback) for the block: what it printed (address, node ids),
    then its standard input closed, which shuts the cluster down; killed by its pid if that takes too long."""
    nodes = Process([sys.executable, "-m", "bench.cluster", *args], env=env)
    try:
        yield json.loads(nodes.wait_for_line(lambda line: line.startswith("{"), timeout=180))
    finally:
        assert nodes.popen.stdin is not None
        nodes.popen.stdin.close()
        try:
            nodes.popen.wait(120)
        except subprocess.TimeoutExpired:
            nodes.kill()
            raise


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
        while not listening("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server is not listening on 127.0.0.1:{port} after 30 s")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        popen.terminate()
        popen.wait(30)
