"""The model app skips ray.serve.llm's per-node model fetch for a model on local disk only.
(The served apps of tests/services/conftest.py start their engines through it.)"""

from __future__ import annotations

import asyncio

from services.llm import build_llm_config
from services.llm_node_init import LocalModelNodeInit
from services.settings import LLMServiceConfig
from ssb.config import load_config


def _runs_node_init(model_source: str) -> bool:
    cfg = build_llm_config(load_config(None), model_source, LLMServiceConfig())
    assert cfg.callback_config.callback_class is LocalModelNodeInit
    callback = LocalModelNodeInit(llm_config=cfg)
    asyncio.run(callback.on_before_node_init())
    return callback.ctx.run_init_node


def test_a_local_model_directory_is_not_fetched_on_each_node(model_path):
    assert _runs_node_init(model_path) is False


def test_a_hub_name_or_remote_path_still_is(tmp_path):
    assert _runs_node_init("HuggingFaceTB/SmolLM2-135M-Instruct") is True
    assert _runs_node_init("s3://bucket/models/smollm2") is True
    assert _runs_node_init(str(tmp_path / "not-there")) is True
