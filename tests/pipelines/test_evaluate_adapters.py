"""How adapters are evaluated: merged into a copy of the base model (CPU default) or served
as vLLM LoRA requests by one engine (GPU default), and both give the same student."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.evaluate import engine_groups, run_evaluation
from pipelines.merged import merged_copy
from ssb.config import load_config


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, model_path) -> str:
    """A LoRA that visibly changes SmolLM2 (random B, not the zero init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    path = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(path)
    return str(path)


def test_cpu_engines_merge_each_adapter_and_gpu_engines_share_one_lora_engine(tmp_path, model_path, adapter):
    adapters = {"base": None, "ssb": adapter}
    lora = engine_groups(load_config(None, ["eval.merge_adapters=false"]), adapters, model_path, tmp_path)
    assert lora == [(model_path, adapters)]
    gpu = engine_groups(load_config(None, ["engine.gpus_per_replica=1"]), adapters, model_path, tmp_path)
    assert gpu == [(model_path, adapters)]
    assert engine_groups(load_config(None, []), {"base": None}, model_path, tmp_path) == [(model_path, {"base": None})]

    groups = engine_groups(load_config(None, []), adapters, model_path, tmp_path)  # CPU: merge
    assert groups[0] == (model_path, {"base": None})
    merged, labels = groups[1]
    assert labels == {"ssb": None} and os.path.dirname(merged) == str(tmp_path)
    assert json.loads((tmp_path / merged / "config.json").read_text())["model_type"] == "llama"
    assert (tmp_path / merged / "tokenizer.json").exists()


def test_a_merged_copy_is_reused_until_the_adapter_changes(tmp_path, model_path, adapter):
    import shutil

    first = merged_copy(model_path, adapter, tmp_path)
    stamp = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns
    assert merged_copy(model_path, adapter, tmp_path) == first
    assert os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == stamp  # not merged again

    changed = tmp_path / "changed"
    shutil.copytree(adapter, changed)
    cfg = json.loads((changed / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 4
    (changed / "adapter_config.json").write_text(json.dumps(cfg))
    assert merged_copy(model_path, str(changed), tmp_path) != first
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_merged_and_lora_evaluation_agree_on_the_student(tmp_path, model_path, adapter, ray_session):
    """The same adapter through both paths: the student's greedy answers agree with each other
    far more than with the base model's. In float32: in bf16 a merged weight is rounded once
    and base + LoRA delta otherwise, and on a CPU with native bf16 that rounding alone flipped
    half the student's greedy answers (the paths, not the adapter, differed)."""
    overrides = ["eval.benchmarks=[synthetic-heldout]", "eval.limit=6", "eval.n=1", "eval.max_tokens=24",
                 "engine.batch_size=6", "engine.cpu_kvcache_gb=1", "model.dtype=float32"]
    texts = {}
    for merge in ("true", "false"):
        cfg = load_config(None, [f"run_dir={tmp_path / merge}", f"eval.merge_adapters={merge}", *overrides])
        summary = run_evaluation(cfg, {"base": None, "ssb": adapter}, progress=False)
        assert summary.problems == 12 and summary.tokens > 0
        # Merged: the base model's engine, then the merged copy's, one after the other in one
        # actor (one vLLM import); LoRA: one engine for both labels.
        assert len(summary.engines) == (2 if merge == "true" else 1)
        assert len({worker for worker, _ in summary.engines}) == 1
        for label in ("base", "ssb"):
            rows = [json.loads(x) for x in (tmp_path / merge / "eval" / label / "synthetic-heldout.jsonl")
                    .read_text().splitlines()]
            assert len(rows) == 6 and all(r["greedy_verdict"] and len(r["sample_verdicts"]) == 1 for r in rows)
            texts[(merge, label)] = [r["greedy_text"] for r in rows]
            answered_by = {r["engine_model"] for r in rows}
            if merge == "true" and label == "ssb":
                merged = (tmp_path / merge / "eval" / "merged").resolve()
                assert len(answered_by) == 1 and Path(answered_by.pop()).resolve().parent == merged
            else:
                assert answered_by == {model_path}
    assert (tmp_path / "true" / "eval" / "merged").is_dir() and not (tmp_path / "false" / "eval" / "merged").exists()

    def prefix_agreement(a: list[str], b: list[str]) -> float:
        return sum(x[:20] == y[:20] for x, y in zip(a, b)) / len(a)

    assert prefix_agreement(texts[("true", "base")], texts[("false", "base")]) >= 5 / 6
    same_student = prefix_agreement(texts[("true", "ssb")], texts[("false", "ssb")])
    assert same_student >= 4 / 6
    assert same_student > prefix_agreement(texts[("true", "ssb")], texts[("true", "base")])
