"""The distillation job for real: SmolLM2-135M + LoRA, 2 Ray Train workers on CPU, the
shards of a real curation run; the adapter in peft and in vLLM; a worker SIGKILLed mid-run;
bad stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.distill import EXPERIMENT, open_checked_store, read_metrics, run_distillation
from ssb.config import load_config
from ssb.store import MANIFEST, ChecksumError, LogitStore, StoreError
from ssb.train import optimizer_steps
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 2
WORKER = "RayTrainWorker"  # Ray Train's worker actor class (v2 and v1)


def train_overrides(run_dir: Path, store: str) -> list[str]:
    # Small and quick: batch 2, LoRA r=8, a higher lr than the paper's so short epochs show it.
    # Six epochs: the curation fixture keeps few rows (one step an epoch), and a worker killed
    # after the first checkpoint must leave steps to redo and to resume into.
    return [f"run_dir={run_dir}", f"train.store={store}", "train.num_workers=2", "train.cpus_per_worker=1",
            "train.batch_size=2", "train.epochs=6", "train.lr=5e-4", "train.lora.r=8", "train.lora.alpha=16",
            f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1", "train.max_failures=2"]


class _Train(threading.Thread):
    """`run_distillation` in the background; its summary or its exception once it returns."""

    def __init__(self, cfg: Any):
        super().__init__(daemon=True, name="distill")
        self.cfg, self.summary, self.error = cfg, None, None

    def run(self) -> None:
        try:
            self.summary = run_distillation(self.cfg)
        except BaseException as e:  # noqa: BLE001 - reported by the fixture
            self.error = e


def _train_workers(ray: Any) -> dict[str, dict[str, Any]]:
    """Live Ray Train worker actors of this driver's job on this node, from this session's GCS
    (not the dashboard's state API: see tests/pipelines/test_faults.py)."""
    from ray._private import state

    ctx = ray.get_runtime_context()
    table = state.actors(job_id=ray.JobID.from_hex(ctx.get_job_id()))
    return {aid: a for aid, a in table.items() if WORKER in a["ActorClassName"] and a["State"] == "ALIVE"
            and a["Address"]["NodeID"] == ctx.get_node_id()}


def _registered_step(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train's controller has registered (what a restarted
    worker group resumes from): a checkpoint directory alone may still be uploading, or
    reported but not yet collected by the controller."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    path = run_dir / "train" / "ray" / EXPERIMENT / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    try:
        latest = json.loads(path.read_text())["latest_checkpoint_result"]
    except (OSError, ValueError):  # not written yet, or read while being rewritten in place
        return 0
    return int(latest["metrics"]["step"]) if latest else 0


def _logged_steps(run_dir: Path) -> list[int]:
    try:
        return [m["step"] for m in read_metrics(run_dir) if "event" not in m]
    except (OSError, ValueError):
        return []


def _watch(run_dir: Path, run: threading.Thread, seen: list[tuple[float, int]]) -> None:
    """Append (time, step) each time the registered checkpoint changes, until `run` ends."""
    while run.is_alive():
        step = _registered_step(run_dir)
        if step and (not seen or seen[-1][1] != step):
            seen.append((time.time(), step))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def distilled(curated_run, tmp_path_factory, ray_session):
    """One real training run; once its first checkpoint is registered, one of its two worker
    processes is SIGKILLed from here, in the middle of the next step."""
    import psutil

    curated_cfg, curated = curated_run
    assert curated.kept >= 2, f"the curation fixture kept {curated.kept} rows: too few for 2 workers"
    run_dir = tmp_path_factory.mktemp("distill")
    cfg = load_config(None, train_overrides(run_dir, curated_cfg.store_dir))
    before = set(_train_workers(ray_session))  # earlier runs in this session
    run, registered = _Train(cfg), []
    run.start()
    watcher = threading.Thread(target=_watch, args=(run_dir, run, registered), daemon=True)
    watcher.start()
    deadline = time.monotonic() + 1800
    while not registered and run.is_alive():
        assert time.monotonic() < deadline, "timed out waiting for the first registered checkpoint"
        time.sleep(0.02)
    assert run.is_alive(), f"training ended before a worker could be killed: make it longer ({run.error!r})"

    workers = {aid: a for aid, a in _train_workers(ray_session).items() if aid not in before}
    assert len(workers) == cfg.train.num_workers, f"expected {cfg.train.num_workers} live {WORKER}s: {workers}"
    victim = psutil.Process(workers[min(workers)]["Pid"])
    assert victim.is_running() and "ray::" in " ".join(victim.cmdline()), victim.cmdline()
    os.kill(victim.pid, signal.SIGKILL)
    kill = {"checkpoint": registered[-1][1], "running": run.is_alive(), "last_logged": max(_logged_steps(run_dir)),
            "pid": victim.pid, "registered": registered}

    run.join(timeout=1800)
    watcher.join()
    assert not run.is_alive(), "training hung after a worker was killed"
    assert run.error is None, f"training failed after a worker was killed: {run.error!r}"
    return cfg, run.summary, read_metrics(run_dir), kill


def _steps(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "event" not in m]


def test_two_workers_lower_the_loss(distilled):
    cfg, summary, metrics, _ = distilled
    steps = _steps(metrics)
    assert summary.steps == steps[-1]["step"] > 0
    by_epoch = [np.mean([m["loss"] for m in steps if m["epoch"] == e]) for e in range(cfg.train.epochs)]
    assert by_epoch[-1] < by_epoch[0], by_epoch
    for m in steps:
        assert m["tokens"] > 0 and m["tokens_per_s"] > 0 and np.isfinite(m["grad_norm"]) and m["lr"] > 0
        assert np.isfinite(m["kl"]) and np.isfinite(m["ce"])


def test_a_killed_worker_resumes_from_the_last_checkpoint(distilled):
    cfg, summary, metrics, kill = distilled
    planned = optimizer_steps(summary.rows, cfg.train, cfg.train.num_workers)
    # Killed while training ran, with steps left to do, after a checkpoint was registered.
    assert kill["running"] and kill["checkpoint"] <= kill["last_logged"] < planned, kill
    resumed = [m for m in metrics if m.get("event") == "resumed"]
    assert len(resumed) == 1, resumed
    # The last checkpoint is the last one the controller registered before the group restarted
    # (a checkpoint reported but not yet collected when the worker died is lost with it).
    last = [step for at, step in kill["registered"] if at < resumed[0]["time"]][-1]
    assert last >= kill["checkpoint"] and resumed[0]["step"] == summary.resumed_from_step == last
    # Continued, not restarted: the steps since that checkpoint redone once, then on to the end.
    split = metrics.index(resumed[0])
    before, after = ([m["step"] for m in _steps(part)] for part in (metrics[:split], metrics[split + 1:]))
    assert before == list(range(1, len(before) + 1)) and len(before) >= max(last, kill["last_logged"])
    assert after == list(range(last + 1, planned + 1)) and summary.steps == planned
    print(f"FAULTS killed_pid={kill['pid']} registered_at_kill={kill['checkpoint']} "
          f"logged_at_kill={kill['last_logged']} resumed_from={last} redone={len(before) - last} planned={planned}")


def test_adapter_loads_in_peft_and_changes_the_model(distilled, model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, summary, _, _ = distilled
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

    _, summary, _, _ = distilled
    merged_dir = merge_adapter(model_path, summary.adapter_dir, tmp_path / "merged")
    assert (merged_dir / "tokenizer.json").exists()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 100, 200]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, summary.adapter_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)(ids).logits
    # Saved in float32: base + adapter up to float rounding, however small the adapter's change
    # (a bf16 copy of a short training's merge kept about a tenth of it: 0.29 off a 0.32 change).
    change, error = (tuned - plain).abs().mean(), (merged - tuned).abs().mean()
    assert error < 1e-3 and error < 0.01 * change, (error, change)


VLLM_GENERATE = r"""
import asyncio, json, sys
from pipelines.engine import build_async_llm, generate_one, prestart_engine_core
from ssb.config import load_config

model_path, adapter, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cfg = load_config(None, ["engine.cpu_kvcache_gb=1", "model.max_model_len=1024"])
prestart_engine_core(cfg.engine)  # as the pipelines' engine actors start theirs
from vllm import SamplingParams, TokensPrompt
from vllm.lora.request import LoRARequest

llm = build_async_llm(model_path, cfg.model, cfg.engine, enable_lora=True, lora_adapters=[adapter])
params = SamplingParams(temperature=0.0, max_tokens=48)

async def greedy(tag, lora):
    outs = await asyncio.gather(*[generate_one(llm, TokensPrompt(prompt_token_ids=p), params, f"{tag}-{i}", lora)
                                  for i, p in enumerate(prompts)])
    return [list(o.outputs[0].token_ids) for o in outs]

async def both():
    return await greedy("base", None), await greedy("lora", LoRARequest("student", 1, adapter))

base, lora = asyncio.run(both())
llm.shutdown()
print("RESULT " + json.dumps({"base": base, "lora": lora}))
"""


def test_adapter_serves_in_vllm_and_changes_greedy_output(distilled, model_path):
    cfg, summary, _, _ = distilled
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


def test_training_reads_only_the_bytes_it_verified(store_copy, model_path, ray_session):
    import pyarrow.parquet as pq

    from pipelines.distill import verified_dataset
    from ssb.batching import TRAIN_COLUMNS

    cfg = load_config(None, [f"run_dir={store_copy.parent}"])
    store = open_checked_store(cfg, _tokenizer(model_path))
    assert verified_dataset(store, TRAIN_COLUMNS).materialize().count() == store.summary()["rows"]
    # Replaced after the check, by a valid Parquet file that a plain read would train on.
    shard = store_copy / store.shards()[0].name
    pq.write_table(pq.read_table(shard).slice(0, 1), shard)
    with pytest.raises(ChecksumError, match=rf"shard {shard.name}: \d+ bytes, manifest says"):
        verified_dataset(store, TRAIN_COLUMNS).materialize()


def test_empty_store_is_refused(tmp_path, model_path):
    from ssb.prompts import tokenizer_fingerprint

    store = LogitStore.create_or_resume(str(tmp_path / "curated"), config_hash="x", model="default",
                                        tokenizer=tokenizer_fingerprint(_tokenizer(model_path)), top_k=20)
    store.append([], {"p1": "no_correct_rollout"})
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(StoreError, match="is empty: no examples committed"):
        run_distillation(cfg)


def test_an_existing_run_needs_resume_and_resume_needs_a_run(distilled, curated_run, tmp_path):
    cfg, _, _, _ = distilled
    with pytest.raises(ValueError, match="pass --resume to continue it"):
        run_distillation(cfg)
    fresh = load_config(None, train_overrides(tmp_path, curated_run[0].store_dir))
    with pytest.raises(ValueError, match="nothing to resume"):
        run_distillation(fresh, resume=True)
