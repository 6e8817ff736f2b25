"""deploy/grafana-dashboard.json and deploy/prometheus.yml: every PromQL expression names only series the server
exports, and groups only by labels those series carry."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT
from tests.unit.fakes import unit_client, unit_settings

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"), "gauge": ("",)}


def exported(tmp_path: Path) -> dict[str, set[str]]:
    """Every series name /metrics exports, with its label names, after a job ran and a frame was refused."""
    with unit_client(unit_settings(tmp_path, frames_per_s=1.0)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"op": "submit", "kind": "echo", "args": {}})
            assert [ws.receive_json()["type"] for _ in range(2)] == ["accepted", "result"]
            for _ in range(5):  # past the burst of 5: one `rate_limited`
                ws.send_text("ping")
                if ws.receive_json()["type"] == "error":
                    break
        text = client.get("/metrics").text
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_expression_names_exported_series_and_their_labels(tmp_path: Path) -> None:
    series = exported(tmp_path)
    exprs = expressions()
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\b(ami_[a-z_]+)\b", expr))
        assert names and names <= set(series), f"{expr}: {names - set(series)} are not exported"
        used |= names
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")} - {"le"}
            for name in names:
                assert labels <= series[name], f"{expr}: {name} has no label {labels - series[name]}"
    wanted = {"ami_jobs_total", "ami_job_seconds_bucket", "ami_pool_queued", "ami_pool_actors", "ami_connections",
              "ami_frames_total", "ami_store_seconds_bucket", "ami_refusals_total"}
    assert wanted <= used, f"the dashboard misses {wanted - used}"


def test_the_prometheus_example_scrapes_the_servers_and_rays_nodes() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    server = jobs["async-ml-inference"]
    assert server["metrics_path"] == "/metrics" and server["authorization"]["credentials_file"]
    assert all(target.endswith(":8000") for target in server["static_configs"][0]["targets"])
    cluster = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    [head] = [line for line in cluster["head_start_ray_commands"] if "ray start" in line]
    port = re.search(r"--metrics-export-port=(\d+)", head)
    assert port is not None
    assert all(target.endswith(f":{port.group(1)}") for target in jobs["ray"]["static_configs"][0]["targets"])
