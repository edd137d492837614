"""ray.serve.llm's node initialisation, skipped for a model that is already a local directory.

Before each replica's engine starts, ray.serve.llm runs a Ray task on every node of the
replica's placement group that fetches the model from a cloud mirror (`s3://`, `gs://`). For
a local directory it has nothing to fetch (it returns the path unchanged), yet it costs a
fresh worker process that imports torch: 15 s of a replica's 76 s start in the test suite
on a 2-core box (bench/RESULTS.md). A hub name or a remote path still goes through it.
"""

from __future__ import annotations

import os

from ray.llm._internal.common.callbacks.base import CallbackBase


class LocalModelNodeInit(CallbackBase):
    async def on_before_node_init(self) -> None:
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and os.path.isdir(source):
            self.ctx.run_init_node = False
            # The one side effect of the skipped task that a local model still needs (torch
            # cannot create its kernel cache when the cache's parent does not exist).
            import torch

            os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
