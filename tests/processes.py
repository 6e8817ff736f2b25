"""Server and cluster processes started by the tests, stopped by the pid they were started with."""

from __future__ import annotations

import sys

from bench.servers import ROOT, Process

__all__ = ["ROOT", "Process", "server_process"]


def server_process(*flags: str, env: dict[str, str] | None = None) -> Process:
    return Process([sys.executable, "-m", "server", *flags], env=env)
