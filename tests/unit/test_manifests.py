"""deploy/*.yaml against the schemas Kubernetes and KubeRay check them with: Kubernetes' own (kubernetes-validate)
for the built-in kinds, KubeRay's RayCluster CRD (a copy in tests/data) for the cluster."""

from __future__ import annotations

import gzip
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helpers import ROOT

CRD = ROOT / "tests" / "data" / "kuberay-v1.7.0-ray.io_rayclusters.yaml.gz"
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def raycluster_schema(version: str) -> dict[str, Any]:
    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    assert crd["spec"]["names"]["kind"] == "RayCluster"
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    found: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return found


def test_there_are_manifests() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Deployment", "Service", "Ingress", "RayCluster"} <= kinds


@pytest.mark.parametrize("name,doc", [(name, doc) for name, doc in documents() if doc["kind"] != "RayCluster"],
                         ids=lambda value: value if isinstance(value, str) else value["kind"])
def test_kubernetes_kinds_match_kubernetes_schemas(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_raycluster_matches_kuberays_crd() -> None:
    [(_, cluster)] = [(name, doc) for name, doc in documents() if doc["kind"] == "RayCluster"]
    group, version = cluster["apiVersion"].split("/")
    assert group == "ray.io"
    schema = raycluster_schema(version)
    jsonschema.validate(cluster, schema)
    broken = {**cluster, "spec": {**cluster["spec"], "headGroupSpec": {"rayStartParams": {"num-cpus": 0}}}}
    with pytest.raises(jsonschema.ValidationError):  # the check bites: a head group without its pod template
        jsonschema.validate(broken, schema)
