"""The distillation job for real: SmolLM2-135M + LoRA, 2 Ray Train workers on CPU, the
shards of a real curation run; the adapter in peft and in vLLM; a killed worker; bad stores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.distill import FAULT_MARKER, open_checked_store, read_metrics, run_distillation
from ssb.config import load_config
from ssb.store import MANIFEST, ChecksumError, LogitStore, StoreError
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 2


def train_overrides(run_dir: Path, store: str) -> list[str]:
    # Small and quick: batch 2, LoRA r=8, a higher lr than the paper's so 3 short epochs show it.
    return [f"run_dir={run_dir}", f"train.store={store}", "train.num_workers=2", "train.cpus_per_worker=1",
            "train.batch_size=2", "train.epochs=3", "train.lr=5e-4", "train.lora.r=8", "train.lora.alpha=16",
            f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1", "train.max_failures=2"]


@pytest.fixture(scope="module")
def distilled(curated_run, tmp_path_factory, ray_session):
    """One real training run whose rank 0 kills itself once, right after the first checkpoint."""
    curated_cfg, curated = curated_run
    assert curated.kept >= 2, f"the curation fixture kept {curated.kept} rows: too few for 2 workers"
    run_dir = tmp_path_factory.mktemp("distill")
    (run_dir / "train").mkdir()
    (run_dir / "train" / FAULT_MARKER).touch()
    cfg = load_config(None, train_overrides(run_dir, curated_cfg.store_dir))
    summary = run_distillation(cfg)
    return cfg, summary, read_metrics(run_dir)


def _steps(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "event" not in m]


def test_two_workers_lower_the_loss(distilled):
    cfg, summary, metrics = distilled
    steps = _steps(metrics)
    assert summary.steps == steps[-1]["step"] > 0
    by_epoch = [np.mean([m["loss"] for m in steps if m["epoch"] == e]) for e in range(cfg.train.epochs)]
    assert by_epoch[-1] < by_epoch[0], by_epoch
    for m in steps:
        assert m["tokens"] > 0 and m["tokens_per_s"] > 0 and np.isfinite(m["grad_norm"]) and m["lr"] > 0
        assert np.isfinite(m["kl"]) and np.isfinite(m["ce"])


def test_a_killed_worker_resumes_from_the_last_checkpoint(distilled):
    cfg, summary, metrics = distilled
    assert not (Path(cfg.output_dir) / "train" / FAULT_MARKER).exists(), "the fault was never injected"
    resumed = [m for m in metrics if m.get("event") == "resumed"]
    assert [m["step"] for m in resumed] == [CHECKPOINT_EVERY]
    assert summary.resumed_from_step == CHECKPOINT_EVERY
    # Continued, not restarted: every step logged once, in order, up to the planned end.
    assert [m["step"] for m in _steps(metrics)] == list(range(1, summary.steps + 1))
    after = metrics[metrics.index(resumed[0]) + 1]
    assert after["step"] == CHECKPOINT_EVERY + 1


def test_adapter_loads_in_peft_and_changes_the_model(distilled, model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, summary, _ = distilled
    adapter = Path(summary.adapter_dir)
    assert adapter == Path(cfg.output_dir) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, str(adapter))
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_merged_model_computes_what_base_plus_adapter_computes(distilled, model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.merged import merge_adapter

    _, summary, _ = distilled
    merged_dir = merge_adapter(model_path, summary.adapter_dir, tmp_path / "merged")
    assert (merged_dir / "tokenizer.json").exists()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 100, 200]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, summary.adapter_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
    # Saved in bf16, like the base: equal up to its rounding, far closer to base + adapter
    # than the base is (measured on a 4-step adapter: 0.02 vs 0.13 mean |Δlogit|).
    assert (merged - tuned).abs().mean() < 0.5 * (tuned - plain).abs().mean()


VLLM_GENERATE = r"""
import json, sys
from vllm import SamplingParams, TokensPrompt
from vllm.lora.request import LoRARequest
from pipelines.engine import build_llm
from ssb.config import load_config

model_path, adapter, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = load_config(None, ["engine.cpu_kvcache_gb=1", "model.max_model_len=1024"])
llm = build_llm(model_path, cfg.model, cfg.engine, enable_lora=True)
params = SamplingParams(temperature=0.0, max_tokens=48)
inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
base = [o.outputs[0].token_ids for o in llm.generate(inputs, params)]
lora = [o.outputs[0].token_ids for o in llm.generate(inputs, params, lora_request=LoRARequest("student", 1, adapter))]
print("RESULT " + json.dumps({"base": [list(b) for b in base], "lora": [list(x) for x in lora]}))
"""


def test_adapter_serves_in_vllm_and_changes_greedy_output(distilled, model_path):
    cfg, summary, _ = distilled
    table = LogitStore.open(cfg.train.store).read_table()
    prompts = [list(map(int, p)) for p in table.column("student_prompt_ids").to_pylist()[:4]]
    out = subprocess.run([sys.executable, "-c", VLLM_GENERATE, model_path, summary.adapter_dir, json.dumps(prompts)],
                         capture_output=True, text=True, timeout=400, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert all(len(x) > 0 for x in got["lora"])
    assert got["lora"] != got["base"]


# -- refused stores: checked before Ray starts --------------------------------------------

@pytest.fixture
def store_copy(curated_run, tmp_path) -> Path:
    cfg, _ = curated_run
    target = tmp_path / "run" / "curated"
    shutil.copytree(cfg.store_dir, target)
    return target


def _tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def _edit_manifest(store: Path, **changes) -> None:
    manifest = json.loads((store / MANIFEST).read_text())
    manifest.update(changes)
    (store / MANIFEST).write_text(json.dumps(manifest))


def test_store_of_another_model_is_refused(store_copy, model_path):
    _edit_manifest(store_copy, model="Qwen/Qwen2.5-3B-Instruct")
    cfg = load_config(None, [f"run_dir={store_copy.parent}"])
    with pytest.raises(StoreError, match=r"curated with model 'Qwen/Qwen2.5-3B-Instruct'.*student is 'default'"):
        open_checked_store(cfg, _tokenizer(model_path))


def test_store_of_another_tokenizer_is_refused(store_copy, model_path):
    _edit_manifest(store_copy, tokenizer="Qwen2Tokenizer/151643/0123456789ab")
    cfg = load_config(None, [f"run_dir={store_copy.parent}"])
    with pytest.raises(StoreError, match=r"curated with tokenizer 'Qwen2Tokenizer/151643/.*token ids mean other"):
        open_checked_store(cfg, _tokenizer(model_path))


def test_corrupted_shard_is_refused_by_name(store_copy, model_path):
    shard = sorted(store_copy.glob("shard-*.parquet"))[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = load_config(None, [f"run_dir={store_copy.parent}"])
    with pytest.raises(ChecksumError, match=rf"shard {shard.name}: sha256 differs"):
        run_distillation(cfg)  # refused before any Ray worker starts
    assert not (store_copy.parent / "train" / "ray").exists()


def test_empty_store_is_refused(tmp_path, model_path):
    from ssb.prompts import tokenizer_fingerprint

    store = LogitStore.create_or_resume(str(tmp_path / "curated"), config_hash="x", model="default",
                                        tokenizer=tokenizer_fingerprint(_tokenizer(model_path)), top_k=20)
    store.append([], {"p1": "no_correct_rollout"})
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(StoreError, match="is empty: no examples committed"):
        run_distillation(cfg)


def test_an_existing_run_needs_resume_and_resume_needs_a_run(distilled, curated_run, tmp_path):
    cfg, _, _ = distilled
    with pytest.raises(ValueError, match="pass --resume to continue it"):
        run_distillation(cfg)
    fresh = load_config(None, train_overrides(tmp_path, curated_run[0].store_dir))
    with pytest.raises(ValueError, match="nothing to resume"):
        run_distillation(fresh, resume=True)
