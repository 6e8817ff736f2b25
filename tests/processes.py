"""Server and cluster processes started by the tests, stopped by the pid they were started with."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Process:
    """A child process whose output lines can be awaited with a timeout."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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


def server_process(*flags: str, env: dict[str, str] | None = None) -> Process:
    return Process([sys.executable, "-m", "server", *flags], env=env)
