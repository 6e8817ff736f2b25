"""Test hosts on this machine: network namespaces on one bridge, addressed in the benchmarking range 198.18.0.0/15.

Each host is a namespace with its loopback and one veth link to a bridge in the root namespace; the bridge has
198.18.0.254, so the tests (in the root namespace) reach every host. No host has a default route: nothing leaves
for an address outside the test hosts. Processes run on a host with `ip netns exec`, and are stopped by their pids
(`ip netns pids` lists exactly the processes in a host). Everything is torn down on the way out.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.servers import Process

NETWORK = "198.18.0"  # 198.18.0.0/24, inside the benchmarking range 198.18.0.0/15
GATEWAY = f"{NETWORK}.254"  # the bridge, in the root namespace, where the tests run


class NamespacesRefused(Exception):
    """The kernel (or the lack of privileges or of `ip`) does not let this machine make network namespaces."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class NetHost:
    name: str
    address: str
    namespace: str
    link: str  # the veth end on the bridge, in the root namespace

    def pids(self) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=30)
        return [int(pid) for pid in done.stdout.split()]


@dataclass
class Hosts:
    """`with Hosts(["head", "worker"]) as hosts:` hosts["head"].address == "198.18.0.1", and so on."""

    names: list[str]
    hosts: dict[str, NetHost] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = f"ami{secrets.token_hex(3)}"  # fresh names each run; interface names stay under 15 characters
        self.bridge = f"{self.tag}br"

    def __getitem__(self, name: str) -> NetHost:
        return self.hosts[name]

    def __enter__(self) -> Hosts:
        if shutil.which("ip") is None:
            raise NamespacesRefused("the `ip` command (iproute2) is missing")
        try:
            _ip("netns", "add", f"{self.tag}-probe")
        except RuntimeError as exc:
            raise NamespacesRefused(str(exc)) from None
        _ip("netns", "del", f"{self.tag}-probe")
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{GATEWAY}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, name in enumerate(self.names, start=1):
                host = NetHost(name, f"{NETWORK}.{index}", f"{self.tag}-{name}", f"{self.tag}v{index}")
                self.hosts[name] = host
                _ip("netns", "add", host.namespace)
                _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
                _ip("link", "set", host.link, "master", self.bridge, "up")
                _ip("-n", host.namespace, "link", "set", "lo", "up")
                _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip("-n", host.namespace, "link", "set", "eth0", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, host: str, args: list[str], env: Mapping[str, str | None] | None = None) -> Process:
        """Start `args` on `host`; its pid is the command's own (`ip netns exec` execs it)."""
        process = Process(["ip", "netns", "exec", self.hosts[host].namespace, *args], env=env)
        self.processes.append(process)
        return process

    def cut(self, host: str) -> None:
        """Pull the host's cable: its link to the bridge goes down, nothing reaches it or leaves it."""
        _ip("link", "set", self.hosts[host].link, "down")

    def kill(self, host: str) -> int:
        """SIGKILL every process on the host (by the pids its namespace holds); how many there were."""
        found = []
        for pid in self.hosts[host].pids():
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.send_signal(signal.SIGKILL)
                found.append(process)
        psutil.wait_procs(found, timeout=30)
        return len(found)

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                with contextlib.suppress(Exception):
                    process.stop(timeout=30)
        for name in self.hosts:
            self.kill(name)  # whatever the processes' own shutdown left
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.popen.wait(10)
        for host in self.hosts.values():
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", host.link)  # and its peer: the kernel frees a namespace's devices only later
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", host.namespace)
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.bridge)


def temp_dir(tag: str) -> Path:
    """A short directory for a Ray node's sockets (AF_UNIX paths stop at 107 bytes), removed by the caller."""
    path = Path("/tmp") / tag
    path.mkdir(parents=True, exist_ok=True)
    return path
