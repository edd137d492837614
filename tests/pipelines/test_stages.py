"""The keyed stages `ssb run` and `ssb sweep` are built from (pipelines/stages.py), around a real
logit store, with curation replaced by a stand-in that reports what it kept (the real one runs in
test_run.py and test_sweep.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.curate import write_run_config
from pipelines.stages import curate_round, key_changes
from ssb.config import load_config
from ssb.store import LogitStore


@pytest.fixture
def curations(monkeypatch):
    """run_curation replaced: records its calls and keeps `rows[0]` examples."""
    calls: list[tuple[str, str | None]] = []
    rows = [3]

    def curate(cfg, *, progress=True, adapter=None):
        calls.append((cfg.output_dir, adapter))
        return SimpleNamespace(store={"rows": rows[0]}, table=lambda: f"stored {rows[0]} rows")

    monkeypatch.setattr("pipelines.curate.run_curation", curate)
    return calls, rows


def _curated_with(run_dir: Path, *overrides: str):
    """A store as `ssb curate` leaves it, with these settings, and its config beside it."""
    cfg = load_config(None, [f"run_dir={run_dir}", *overrides])
    write_run_config(cfg)
    LogitStore.create_or_resume(cfg.store_dir, config_hash=cfg.curation_hash(), model="m", tokenizer="t", top_k=20)
    return cfg


def test_a_store_curated_with_other_settings_is_refused_or_curated_anew(tmp_path, curations, capsys):
    calls, _ = curations
    _curated_with(tmp_path, "curate.rollout.n=8")
    cfg = load_config(None, [f"run_dir={tmp_path}", "curate.rollout.n=4"])
    manifest = Path(cfg.store_dir) / "manifest.json"
    with pytest.raises(ValueError, match=r"^curate: .*curated came from other settings \(curate.rollout.n: 8 → 4\); "
                                         r"--on-change retrain redoes it"):
        curate_round(cfg, 1, None, on_change="refuse")
    assert calls == [] and manifest.exists()  # nothing touched

    assert curate_round(cfg, 1, None)
    assert calls == [(str(tmp_path), None)] and not manifest.exists()  # removed, then curated from scratch
    assert "curate: redoes it; " in capsys.readouterr().out


def test_a_store_with_the_same_settings_resumes_and_says_so(tmp_path, curations, capsys):
    calls, _ = curations
    cfg = _curated_with(tmp_path, "curate.rollout.n=4", "curate.shard_rows=2")
    again = load_config(None, [f"run_dir={tmp_path}", "curate.rollout.n=4", "curate.shard_rows=7"])  # how, not what
    assert curate_round(again, 1, None)
    assert calls == [(cfg.output_dir, None)] and (Path(cfg.store_dir) / "manifest.json").exists()
    assert f"curate: resumes {cfg.store_dir}, curated with these settings" in capsys.readouterr().out


def test_a_round_that_kept_no_examples_ends_the_rounds_and_a_first_one_fails(tmp_path, curations, capsys):
    _, rows = curations
    rows[0] = 0
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="curation kept no examples: nothing to train on"):
        curate_round(cfg, 1, None)
    assert not curate_round(cfg, 2, None, title=" (round 2)")
    assert "curate (round 2): kept no examples: the rounds stop after round 1" in capsys.readouterr().out


def test_a_change_is_named_by_its_setting_and_long_lists_are_counted():
    old = {"train": {"lr": 5e-4, "lora": {"r": 8}}, "store": "a"}
    assert key_changes(old, {"train": {"lr": 1e-4, "lora": {"r": 8}}, "store": "a"}) == "train.lr: 0.0005 → 0.0001"
    many = {"train": {"lr": 1e-4, "lora": {"r": 16}, "epochs": 2}, "store": "b"}
    assert key_changes(old, many) == ('store: "a" → "b"; train.epochs: null → 2; train.lora.r: 8 → 16 and 1 more')
    assert key_changes(old, old, unseen="the adapter's content") == "the adapter's content"
