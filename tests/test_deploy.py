"""deploy/server.yaml as Kubernetes would run it: the server configured with the manifest's own environment, and
the kubelet's probe requests (path, port, headers) answered 200, with tokens and an allowed-hosts list set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from server.config import Settings
from tests.helpers import ROOT, FixtureHTTP, ServerThread

SECRETS = {"ami-tokens": "app:probe-test-secret", "ray-auth-token": "unused-here"}
JOINING = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AMI_STORE")  # the cluster and Redis of a real install


def container() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "server.yaml").read_text()))
    deployment = next(doc for doc in documents if doc and doc["kind"] == "Deployment")
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def manifest_environment(spec: dict[str, Any]) -> dict[str, str]:
    """The container's env, secrets filled with test values; fieldRefs as Kubernetes would fill them."""
    env = {}
    for item in spec["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = SECRETS[item["valueFrom"]["secretKeyRef"]["key"]]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "ami-server-7d9f-abcde"
    return env


@pytest.fixture(scope="module")
def deployed(ray_session: None, http: FixtureHTTP, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ServerThread]:
    env = {name: value for name, value in manifest_environment(container()).items() if name not in JOINING}
    settings = Settings.load([], environ=env).replace(
        data_dir=Path(tmp_path_factory.mktemp("deploy")), store="memory", pools=(("echo", 1),), enable_echo=True,
        euro_url=http.url("/euro/"), actor_cpus=0.1, dashboard=False)
    assert settings.tokens and settings.allowed_hosts, "the manifest sets tokens and allowed hosts"
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_the_manifests_probes_pass(deployed: ServerThread, probe: str) -> None:
    spec = container()
    get = spec[probe]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports[get["port"]] == 8000 == Settings().port, "the probe's port is the one the server listens on"
    headers = {header["name"]: header["value"] for header in get.get("httpHeaders", [])}
    headers.setdefault("Host", f"10.1.2.3:{ports[get['port']]}")  # what the kubelet sends without one: the pod IP
    answer = requests.get(f"{deployed.url}{get['path']}", headers={**headers, "User-Agent": "kube-probe/1.31"},
                          timeout=30)
    assert answer.status_code == 200, answer.text
    assert "reason" not in answer.text, "no detail without a token"


def test_without_the_manifests_host_header_a_probe_would_be_refused(deployed: ServerThread) -> None:
    """Why the probes send the public name: the kubelet's default Host (the pod's address) is not an allowed host."""
    answer = requests.get(f"{deployed.url}/healthz", headers={"Host": "10.1.2.3:8000"}, timeout=30)
    assert answer.status_code == 400
