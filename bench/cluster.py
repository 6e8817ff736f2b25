"""A Ray cluster on this machine: a head with no CPUs (so no actors) and worker nodes (tests and `bench scale`).

    python -m bench.cluster [WORKERS [CPUS_EACH]]      (default: 2 workers of 1 CPU)

Prints one JSON line with the address and node ids, runs until its standard input closes, then shuts the
cluster down."""

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
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cpus = float(sys.argv[2]) if len(sys.argv) > 2 else 1
    workers = [cluster.add_node(num_cpus=cpus, object_store_memory=100 * MiB) for _ in range(count)]
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
