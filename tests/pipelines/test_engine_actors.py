"""Engine actors' Ray options, on real Ray: an engine pool's workers run at the configured
niceness (Ray's own default for workers is 15), whatever else the job's workers get."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from pipelines.engine import engine_actor_options, serve_runtime_env
from ssb.config import EngineConfig, load_config


class _Niceness:
    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.table({"nice": [os.nice(0)] * batch.num_rows})


def _pool_niceness(ray, engine: EngineConfig) -> set[int]:
    ds = ray.data.range(4, override_num_blocks=2).map_batches(
        _Niceness, compute=ray.data.ActorPoolStrategy(size=1), batch_size=2, batch_format="pyarrow",
        **engine_actor_options(engine))
    return {row["nice"] for row in ds.take_all()}


def test_engine_options_carry_resources_and_niceness():
    gpu = load_config(None, ["engine.gpus_per_replica=1", "engine.tensor_parallel_size=2",
                             "engine.cpus_per_replica=4", "engine.worker_niceness=5"]).engine
    assert engine_actor_options(gpu) == {"num_cpus": 4, "num_gpus": 2,
                                         "runtime_env": {"env_vars": {"RAY_worker_niceness": "5"}}}
    served = engine_actor_options(gpu, serve=True)  # a Serve deployment's: the job's runtime_env under it
    assert served["runtime_env"]["env_vars"]["RAY_worker_niceness"] == "5"
    assert {k: v for k, v in served.items() if k != "runtime_env"} == {"num_cpus": 4, "num_gpus": 2}
    ray_default = load_config(None, ["engine.worker_niceness=null"]).engine
    assert engine_actor_options(ray_default) == {"num_cpus": 1.0}


@pytest.mark.parametrize("value", [25, -5])
def test_niceness_outside_what_a_worker_can_set_itself_is_refused(value):
    with pytest.raises(Exception, match="worker_niceness"):
        load_config(None, [f"engine.worker_niceness={value}"])


def test_a_serve_replica_keeps_the_jobs_runtime_env_under_the_engine_env_vars():
    job = {"pip": ["x==1"], "working_dir": "gcs://_ray_pkg_1.zip", "env_vars": {"HF_TOKEN": "t", "VLLM_A": "job"}}
    merged = serve_runtime_env({"VLLM_A": "engine", "RAY_worker_niceness": "0"}, job=job)
    assert merged == {"pip": ["x==1"], "working_dir": "gcs://_ray_pkg_1.zip",
                      "env_vars": {"HF_TOKEN": "t", "VLLM_A": "engine", "RAY_worker_niceness": "0"}}
    assert job["env_vars"] == {"HF_TOKEN": "t", "VLLM_A": "job"}  # not changed in place
    assert serve_runtime_env({"A": "1"}, job={}) == {"env_vars": {"A": "1"}}


def test_an_engine_pool_runs_at_the_configured_niceness(ray_session):
    default = load_config(None, []).engine
    assert default.worker_niceness == 0
    assert _pool_niceness(ray_session, default) == {0}
    assert _pool_niceness(ray_session, default.model_copy(update={"worker_niceness": 7})) == {7}
    # None leaves Ray's own worker niceness (15 unless RAY_worker_niceness says otherwise)
    expected = int(os.environ.get("RAY_worker_niceness", 15))
    assert _pool_niceness(ray_session, default.model_copy(update={"worker_niceness": None})) == {expected}
