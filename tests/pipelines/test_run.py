"""`ssb run` end to end at toy size, two bootstrapping rounds: curate → train → curate with
the round-1 student → train → evaluate base, round 1 and round 2 → report."""

from __future__ import annotations

import json
import re

import pytest

from tests.background import BACKGROUND
from tests.conftest import run_ssb, tiny_curation_overrides

CURATED, EVALUATED = 12, 6  # problems per round (fewer keep too few to train on) and per evaluated model


def tiny_run_overrides(run_dir) -> list[str]:
    return tiny_curation_overrides(run_dir, n=CURATED) + [
        "train.epochs=1", "train.batch_size=2", "train.lora.r=8", "train.lora.alpha=16", "train.lr=5e-4",
        "eval.benchmarks=[synthetic-heldout]", f"eval.limit={EVALUATED}", "eval.n=2", "eval.max_tokens=64",
    ]


@pytest.mark.slow
def test_run_writes_a_report_comparing_base_and_student_per_round(two_round_run):
    """As a user runs it (its own process and local Ray): a quiet console, the logs in the run."""
    from ssb.config import load_config

    run_dir, done = two_round_run
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    noise = [line for line in console.splitlines() if "Traceback" in line or re.search(r"\bERROR\b", line)]
    assert not noise, "\n".join(noise[:20])
    # nor the libraries' own log lines ("2026-12-03 04:07:36,319\tINFO worker.py:2038 -- ...") or load/save bars
    chatter = [line for line in console.splitlines()
               if re.match(r"\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(INFO|WARNING)\b", line)
               or "Loading weights" in line or "Writing model shards" in line]
    assert not chatter, "\n".join(chatter[:20])
    assert "core_worker.cc" not in console  # Ray's C++ lines on fd 2 went to logs/native.log
    assert "== curate (round 1)" in done.stdout and f"report: {run_dir}/report.md" in done.stdout
    assert f"inspect every problem's path: ssb inspect {run_dir}" in done.stdout
    logs = run_dir / "logs"
    assert (logs / "driver.log").stat().st_size > 0  # Ray's and the libraries' own lines went here
    assert any(logs.glob("ray/worker-*.out")) and any(logs.glob("ray/worker-*.err"))

    # Round 2 curated with round 1's student: base model + round 1's adapter, merged into a copy
    # of it (the CPU default; tests/pipelines/test_curate.py runs the LoRA-request path).
    round2 = load_config(run_dir / "round-2" / "config.yaml")
    assert round2.model.adapter == str((run_dir / "adapter").resolve())
    assert (run_dir / "round-2" / "adapter" / "adapter_config.json").exists()
    from ssb.store import LogitStore

    manifest = LogitStore.open(round2.store_dir, allow_empty=True).manifest
    assert manifest["model"] == "default"  # still the base model's identity: the student trains on it
    no_adapter = round2.model_copy(update={"model": round2.model.model_copy(update={"adapter": None})})
    assert manifest["config_hash"] == round2.curation_hash() != no_adapter.curation_hash()  # the adapter counts

    report = json.loads((run_dir / "report.json").read_text())
    entry = report["benchmarks"]["synthetic-heldout"]
    for label in ("base", "ssb"):
        assert entry[label]["n"] == EVALUATED
        lo, hi = entry[label]["ci95"]
        assert 0.0 <= lo <= entry[label]["accuracy"] <= hi <= 1.0
    assert [c["round"] for c in report["curation"]] == [1, 2]
    assert all(c["problems"] == CURATED for c in report["curation"])
    assert [t["round"] for t in report["training"]] == [1, 2] and all(t["steps"] >= 1 for t in report["training"])
    assert [(r["round"], r["label"]) for r in report["rounds"]] == [(0, "base"), (1, "round-1"), (2, "ssb")]
    assert "Accuracy per round" in (run_dir / "report.md").read_text()
    # Each round's curating model answered its mixed problems zero-shot, apart from the benchmarks.
    diagnostics = report["diagnostics"]["rounds"]
    assert [(d["round"], d["model"]) for d in diagnostics] == [(1, "base"), (2, "round-1")]
    assert all(d["zero_shot"]["n"] == d["mixed"] for d in diagnostics)  # fewer than 64: all of them
    assert "## Diagnostics" in (run_dir / "report.md").read_text()
    assert set(json.loads((run_dir / "eval" / "results.json").read_text())) == {"base", "round-1", "ssb"}
    # Round 1's adapter was merged once, for round 2's curation, and evaluated from that copy.
    assert len(list((run_dir / "round-2" / "merged").glob("*/.complete"))) == 1
    assert len(list((run_dir / "eval" / "merged").glob("*/.complete"))) == 1  # the last round's only
    for name in ("report.md", "accuracy.png", "loss.png", "adapter/adapter_config.json", "timings.json"):
        assert (run_dir / name).exists(), name
    for label in ("base", "round-1", "ssb"):
        rows = [json.loads(x) for x in (run_dir / "eval" / label / "synthetic-heldout.jsonl").read_text().splitlines()]
        assert len(rows) == EVALUATED and all(len(r["sample_verdicts"]) == 2 and r["greedy_verdict"] for r in rows)
    # Held-out means held out: no evaluated problem was curated.
    assert not LogitStore.open(str(run_dir / "curated")).done_ids() & {r["id"] for r in rows}


def _ssb_run(run_dir, *extra: str, flags: tuple[str, ...] = ()):
    return run_ssb("run", "--rounds", "1", *flags, *tiny_run_overrides(run_dir), *extra, timeout=1800)


@pytest.mark.slow
@pytest.mark.background("rerun")
def test_a_rerun_redoes_exactly_the_stages_whose_settings_changed_and_says_so():
    """Round 1 of the session's run again with another train.lr and eval.limit: the training and
    both evaluations are redone (--skip-base too), the report names the new settings; the same
    command again reuses everything; a further change under --on-change refuse stops in a line."""
    BACKGROUND.result("rerun")


@BACKGROUND.job("rerun")
def _rerun_round_one() -> None:
    """The body of the test above: only `ssb run` processes, so it runs beside other tests."""
    import shutil

    from ssb.config import load_config

    source, first = BACKGROUND.result("two_round_run")
    tmp_path = BACKGROUND.tmp_path("rerun")
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("round-2"))
    # one LoRA engine for base and student: not part of what a result depends on
    changed = ["train.lr=1e-4", f"eval.limit={EVALUATED - 2}", "eval.merge_adapters=false"]

    done = _ssb_run(run_dir, *changed, flags=("--skip-base",))
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-3000:]
    assert "Traceback" not in out + done.stderr
    assert "curate: resumes " in out
    assert "train: redoes it; " in out and "came from other settings (train.lr: 0.0005 → 0.0001)" in out
    assert f"evaluate base: redoes it; its results on synthetic-heldout came from other settings " \
           f"(eval.limit: {EVALUATED} → {EVALUATED - 2})" in out  # --skip-base or not
    assert "evaluate ssb: redoes it; " in out and "zero-shot round 1: reuses" in out
    assert load_config(run_dir / "train" / "config.yaml").train.lr == 1e-4
    report = json.loads((run_dir / "report.json").read_text())
    assert report["training"][0]["settings"]["lr"] == 1e-4
    assert "- round 1: train.lr=0.0001, " in (run_dir / "report.md").read_text()
    entry = report["benchmarks"]["synthetic-heldout"]
    assert entry["base"]["n"] == entry["ssb"]["n"] == EVALUATED - 2

    kept = [run_dir / "adapter" / "adapter_model.safetensors", run_dir / "eval" / "results.json"]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    again = _ssb_run(run_dir, *changed, flags=("--skip-base",))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    for line in ("train: reuses the adapter trained with these settings",
                 "evaluate base: reuses its results on synthetic-heldout, measured with these settings",
                 "evaluate ssb: reuses its results on synthetic-heldout, measured with these settings"):
        assert line in again.stdout
    assert "== evaluate" not in again.stdout and {p: p.stat().st_mtime_ns for p in kept} == stamps

    refused = _ssb_run(run_dir, *changed, "train.lr=2e-4", flags=("--on-change", "refuse"))
    err = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(err) == 1, refused.stderr
    assert err[0].startswith("ssb run: train: ")
    assert "(train.lr: 0.0001 → 0.0002); --on-change retrain redoes it" in err[0]
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps
