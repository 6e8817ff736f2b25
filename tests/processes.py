"""Server and cluster processes started by the tests, stopped by the pid they were started with."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from bench.servers import ROOT, Process, environment

__all__ = ["ROOT", "Process", "environment", "server_process"]


def server_process(*flags: str, env: Mapping[str, str | None] | None = None) -> Process:
    return Process([sys.executable, "-m", "server", *flags], env=env)
