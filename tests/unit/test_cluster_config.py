"""ray-cluster.yaml as `ray up` reads it: Ray's own schema and checks, every port pinned and listed, no usage
statistics, nothing installed where the ssh user cannot write."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.helpers import ROOT

CONFIG = ROOT / "ray-cluster.yaml"
# Ray's `ray start` flags that choose a port; unset, each is random (or a default the comment must still list).
PORT_FLAGS = ("port", "node-manager-port", "object-manager-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "dashboard-agent-listen-port", "metrics-export-port", "dashboard-port", "ray-client-server-port",
              "min-worker-port", "max-worker-port")
HEAD_ONLY = ("port", "dashboard-port", "ray-client-server-port")


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


def start_lines(commands: list[str]) -> list[str]:
    return [line for line in commands if " ray start " in f" {line} " or "/ray start " in line]


def flags(line: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+)=(\S+)", line))


def test_rays_own_schema_and_checks_accept_it() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config(), schema)  # plain schema validation, as editors and CI linters do
    validate_config(prepare_config(config()))  # and what `ray up` itself runs


def test_every_port_is_pinned_on_every_node_and_listed_in_the_comment() -> None:
    loaded = config()
    [head] = start_lines(loaded["head_start_ray_commands"])
    [worker] = start_lines(loaded["worker_start_ray_commands"])
    head_flags, worker_flags = flags(head), flags(worker)
    assert set(PORT_FLAGS) <= set(head_flags), set(PORT_FLAGS) - set(head_flags)
    assert set(PORT_FLAGS) - set(HEAD_ONLY) <= set(worker_flags), set(PORT_FLAGS) - set(HEAD_ONLY) - set(worker_flags)
    for name in set(PORT_FLAGS) - set(HEAD_ONLY):
        assert head_flags[name] == worker_flags[name], f"--{name} differs between head and workers"
    comment = "\n".join(line for line in CONFIG.read_text().splitlines() if line.startswith("#"))
    listed = {int(port) for port in re.findall(r"\b(\d{4,5})\b", comment)}
    pinned = {int(head_flags[name]) for name in PORT_FLAGS if name not in ("min-worker-port", "max-worker-port")}
    assert pinned <= listed, f"ports pinned but not listed: {pinned - listed}"
    assert f"{head_flags['min-worker-port']}-{head_flags['max-worker-port']}" in comment
    for line in (head, worker):
        assert "--disable-usage-stats" in line


def test_nothing_is_installed_where_the_ssh_user_cannot_write() -> None:
    loaded = config()
    assert all(not target.startswith(("/opt", "/usr")) for target in loaded["file_mounts"])
    for command in loaded["setup_commands"]:
        assert "/opt/" not in command and "sudo" not in command, command
