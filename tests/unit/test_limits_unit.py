"""The server raises its open-file limit to the hard limit at start (each socket is a file)."""

from __future__ import annotations

import resource
import subprocess
import sys

from tests.helpers import ROOT

PROBE = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
from server.app import raise_file_limit
print(raise_file_limit())
"""


def test_the_soft_file_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert int(done.stdout.strip()) == (hard if hard != resource.RLIM_INFINITY else 256) != 256
