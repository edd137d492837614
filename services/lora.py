"""LoRA adapters by name from a local directory, for `ray.serve.llm`.

ray.serve.llm 2.60 loads adapters only from object stores: `lora_config.
dynamic_lora_loading_path` must start with s3://, gs://, abfss:// or azure:// (its validator
refuses a local path, and its downloader has no local scheme). On a laptop or a cluster with
a shared filesystem the adapters are plain directories, so this LLMServer subclass resolves
"<model_id>:<name>" to `<lora_root>/<name>/` itself and hands the path to vLLM, with the same
per-replica multiplexing (an LRU of `max_adapters_per_replica` adapters) as the native path.
Names cannot leave the root (`resolve_under`).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from pipelines.fast_start import InCoreLLMServer

LORA_ROOT_KEY = "ssb_lora_root"
MAX_ADAPTERS_KEY = "ssb_max_adapters_per_replica"


class LocalLoraLLMServer(InCoreLLMServer):
    async def __init__(self, llm_config: Any, **kwargs: Any):
        await super().__init__(llm_config, **kwargs)
        from ray.llm._internal.common.models import global_id_manager
        from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

        from services.settings import resolve_under

        root = llm_config.experimental_configs[LORA_ROOT_KEY]

        async def load(lora_model_id: str) -> DiskMultiplexConfig:
            name = lora_model_id.split(":", 1)[-1]
            path = resolve_under(name, [root]) if "/" not in name else None
            if path is None or not (path / "adapter_config.json").exists():
                raise ValueError(f"no LoRA adapter named {name!r} is served")
            return DiskMultiplexConfig(model_id=lora_model_id, max_total_tokens=None, local_path=str(path),
                                       lora_assigned_int_id=global_id_manager.next())

        self._load_model = serve.multiplexed(
            max_num_models_per_replica=int(llm_config.experimental_configs.get(MAX_ADAPTERS_KEY, 4)))(load)

    async def _maybe_resolve_lora_from_multiplex(self) -> None:
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self.engine.resolve_lora(await self._load_model(model_id))
