"""A real two-node Ray cluster on loopback for the job-submission tests (see loopback.py)."""

from __future__ import annotations

import pytest

from tests.cluster.loopback import LoopbackCluster

# Three logical CPUs a node and two per engine replica or Train worker: exactly one of
# either fits on each node, so two of them must land on different nodes.
NODE_CPUS = 3
PER_REPLICA_CPUS = 2


# Module scope: only test_submit.py uses it, and its raylets, GCS and agents would otherwise
# take CPU from every later test on a 2-core box.
@pytest.fixture(scope="module")
def loopback_cluster(model_path):
    # Both nodes' engines on every core of this box: their OpenMP threads sleep when idle
    # (pipelines/engine.py), so each uses the cores the other leaves: the two-node curation ran
    # in 105 s (wall, engine start-up included) unbound, 133 s with each node bound to one core.
    cluster = LoopbackCluster([{"num_cpus": NODE_CPUS, "resources": {"node_head": 1}},
                               {"num_cpus": NODE_CPUS, "resources": {"node_worker": 1}}])
    with cluster:
        yield cluster
