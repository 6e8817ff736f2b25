"""A Ray cluster of a head (no CPUs, so no actors) and two worker nodes on this machine.

Run as a script: prints one JSON line with the address and node ids, then runs until its
standard input closes, then shuts the cluster down."""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster

MiB = 1024 * 1024


def main() -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * MiB},
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=100 * MiB) for _ in range(2)]
    cluster.wait_for_nodes()
    print(json.dumps({
        "address": cluster.address,
        "head": cluster.head_node.node_id,  # type: ignore[attr-defined]
        "workers": [node.node_id for node in workers],
    }), flush=True)
    try:
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
