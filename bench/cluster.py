"""A Ray cluster on this machine: a head with no CPUs (so no actors) and worker nodes (tests and `bench scale`).

    python -m bench.cluster [WORKERS [CPUS_EACH]] [--dashboard-port PORT]    (default: 2 workers of 1 CPU)

Prints one JSON line with the address and node ids, runs until its standard input closes, then shuts the
cluster down. Every node listens on 127.0.0.1. Started with RAY_AUTH_MODE=token and a token (RAY_AUTH_TOKEN), the
cluster asks every driver for that token, as `ray start --head` does on Ray 2.60."""

from __future__ import annotations

import argparse
import json
import sys

from ray.cluster_utils import Cluster

MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"  # on this machine only: nothing of the test cluster reaches the network


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("workers", nargs="?", type=int, default=2)
    parser.add_argument("cpus", nargs="?", type=float, default=1.0, help="CPUs of each worker")
    parser.add_argument("--dashboard-port", type=int, default=0, help="start the head's dashboard on this port")
    options = parser.parse_args()
    dashboard = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": options.dashboard_port}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 100 * MiB, "node_ip_address": LOOPBACK,
                        **(dashboard if options.dashboard_port else {"include_dashboard": False})},
    )
    workers = [cluster.add_node(num_cpus=options.cpus, object_store_memory=100 * MiB, node_ip_address=LOOPBACK)
               for _ in range(options.workers)]
    cluster.wait_for_nodes()
    print(json.dumps({
        "address": cluster.address,
        "head": cluster.head_node.node_id,  # type: ignore[attr-defined]
        "workers": [node.node_id for node in workers],
        "addresses": sorted({cluster.head_node.node_ip_address, *(node.node_ip_address for node in workers)}),  # type: ignore[attr-defined]
    }), flush=True)
    try:
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
