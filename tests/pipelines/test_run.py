"""`ssb run` end to end at toy size: curate → train → evaluate base and student → report."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_curation_overrides


def tiny_run_overrides(run_dir) -> list[str]:
    return tiny_curation_overrides(run_dir, n=16) + [
        "train.epochs=1", "train.batch_size=2", "train.lora.r=8", "train.lora.alpha=16", "train.lr=5e-4",
        "eval.benchmarks=[synthetic-heldout]", "eval.limit=16", "eval.n=2", "eval.max_tokens=96",
    ]


@pytest.mark.slow
def test_run_writes_a_report_comparing_base_and_student(tmp_path, model_path, ray_session):
    from cluster.cli import main

    run_dir = tmp_path / "run"
    assert main(["run", "-q", *tiny_run_overrides(run_dir)]) == 0

    report = json.loads((run_dir / "report.json").read_text())
    entry = report["benchmarks"]["synthetic-heldout"]
    for label in ("base", "ssb"):
        assert entry[label]["n"] == 16
        lo, hi = entry[label]["ci95"]
        assert 0.0 <= lo <= entry[label]["accuracy"] <= hi <= 1.0
    assert report["curation"][0]["problems"] == 16
    assert report["training"][0]["steps"] >= 1
    for name in ("report.md", "accuracy.png", "loss.png", "adapter/adapter_config.json", "timings.json"):
        assert (run_dir / name).exists(), name
    for label in ("base", "ssb"):
        rows = [json.loads(x) for x in (run_dir / "eval" / label / "synthetic-heldout.jsonl").read_text().splitlines()]
        assert len(rows) == 16 and all(len(r["sample_verdicts"]) == 2 and r["greedy_verdict"] for r in rows)
    # Held-out means held out: no evaluated problem was curated.
    from ssb.store import LogitStore

    assert not LogitStore.open(str(run_dir / "curated")).done_ids() & {r["id"] for r in rows}
