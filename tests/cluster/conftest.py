"""A real two-node Ray cluster on loopback for the job-submission tests (see loopback.py)."""

from __future__ import annotations

import os

import pytest

from tests.cluster.loopback import LoopbackCluster

# Three logical CPUs a node and two per engine replica or Train worker: exactly one of
# either fits on each node, so two of them must land on different nodes.
NODE_CPUS = 3
PER_REPLICA_CPUS = 2


def node_cores(node: int) -> dict[str, str]:
    """The cores of this box a node's vLLM engines run on: half each, when there are two or more."""
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    if not half:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores[node * half:(node + 1) * half]))}


# Module scope: only test_submit.py uses it, and its raylets, GCS and agents would otherwise
# take CPU from every later test on a 2-core box.
@pytest.fixture(scope="module")
def loopback_cluster(model_path):
    # Each node's engine threads on a core of its own, as on separate machines: both bound to
    # every core of this one box, two engines' OpenMP threads would spin against each other.
    cluster = LoopbackCluster([{"num_cpus": NODE_CPUS, "resources": {"node_head": 1}, "env": node_cores(0)},
                               {"num_cpus": NODE_CPUS, "resources": {"node_worker": 1}, "env": node_cores(1)}])
    with cluster:
        yield cluster
