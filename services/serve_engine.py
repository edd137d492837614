"""ray.serve.llm's replicas with, on CPU, the model inside vLLM's engine-core process.

ray.serve.llm gives a CPU engine vLLM's "mp" executor: the replica spawns an engine core, which
spawns a worker process for the one rank, and each fresh interpreter imports torch and vLLM
before the model loads. The pipelines' engines run the model in the engine core itself ("uni"
executor, pipelines/engine.py `runs_in_engine_core`): one process and one import fewer, at the
same tokens per second (bench/engine_start.py). `InCoreLLMServer` serves through such an engine
wherever that applies (a CPU engine of one rank); GPU engines and tensor parallelism keep
ray.serve.llm's executor.
"""

from __future__ import annotations

from typing import Any

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
from ray.serve.llm.deployment import LLMServer

from pipelines.engine import engine_core_executor, runs_in_engine_core
from ssb.config import EngineConfig


class InCoreVLLMEngine(VLLMEngine):
    def _start_async_llm_engine(self, vllm_engine_args: Any, vllm_engine_config: Any, placement_group: Any) -> Any:
        from vllm.platforms import current_platform

        parallel = vllm_engine_config.parallel_config
        engine = EngineConfig(gpus_per_replica=0.0 if current_platform.is_cpu() else 1.0,
                              tensor_parallel_size=parallel.world_size)
        if not runs_in_engine_core(engine):
            return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)
        with engine_core_executor(engine) as executor:
            parallel.distributed_executor_backend = executor["distributed_executor_backend"]
            return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)


class InCoreLLMServer(LLMServer):
    _default_engine_cls = InCoreVLLMEngine
