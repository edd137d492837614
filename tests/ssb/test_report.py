"""The report files and plots built from a run directory's outputs (no engine, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from ssb.report import build_report, funnel, plot_accuracy, render_table, write_report
from ssb.scoring import ProblemOutcome, score


def _results(label: str, hits: int, n: int = 10) -> dict:
    outcomes = [ProblemOutcome(samples=[i < hits, False], greedy=i < hits, majority=i < hits, answered=2)
                for i in range(n)]
    return {"synthetic-heldout": score("synthetic-heldout", label, outcomes, tokens=100).to_dict()}


def _fake_run(run_dir: Path, rounds: int = 1) -> None:
    (run_dir / "eval").mkdir(parents=True)
    results = {"base": _results("base", 1), "ssb": _results("ssb", 6)}
    if rounds == 2:
        results["round-1"] = _results("round-1", 4)
    (run_dir / "eval" / "results.json").write_text(json.dumps(results))
    for r in range(1, rounds + 1):
        d = run_dir if r == 1 else run_dir / f"round-{r}"
        (d / "train").mkdir(parents=True, exist_ok=True)
        (d / "curation_summary.json").write_text(json.dumps({
            "problems": 16, "already_done": 0, "processed": 16, "kept": 5,
            "skipped": {"no_correct_rollout": 6, "no_incorrect_rollout": 2, "teacher_answer_wrong": 3},
            "rollout_tokens": 4000, "teacher_tokens": 900, "wall_seconds": 30.0,
            "store": {"rows": 5, "bytes": 12345, "bytes_per_token": 80.5}}))
        lines = [{"event": "resumed", "step": 0}] + [{"step": s, "epoch": 0, "loss": 1.0 / s} for s in range(1, 5)]
        (d / "train" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        (d / "train" / "summary.json").write_text(json.dumps({"steps": 4, "rows": 5, "wall_seconds": 12.0}))
    (run_dir / "timings.json").write_text(json.dumps({"curate": 30.0, "train": 12.0, "eval": 40.0}))


def test_funnel_counts_problems_mixed_and_accepted():
    f = funnel({"problems": 16, "processed": 16, "kept": 5,
                "skipped": {"no_correct_rollout": 6, "no_incorrect_rollout": 2, "teacher_answer_wrong": 3}})
    assert (f["problems"], f["mixed"], f["accepted"]) == (16, 8, 5)


def test_report_json_holds_base_and_ssb_per_benchmark(tmp_path):
    _fake_run(tmp_path)
    report = write_report(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    entry = saved["benchmarks"]["synthetic-heldout"]
    for label, acc in (("base", 0.1), ("ssb", 0.6)):
        assert entry[label]["accuracy"] == acc and entry[label]["n"] == 10
        lo, hi = entry[label]["ci95"]
        assert lo < acc < hi
    assert abs(entry["delta"] - 0.5) < 1e-9 and entry["verdict"].startswith("higher")
    assert saved["curation"][0]["mixed"] == 8 and saved["curation"][0]["accepted"] == 5
    assert saved["tokens"] == {"rollout": 4000, "teacher": 900, "eval": 200}
    assert saved["bytes"]["store"] == 12345 and saved["times"]["train"] == 12.0
    assert saved["training"][0]["final_loss"] == 0.25 and len(saved["training"][0]["loss_curve"]) == 4
    assert report["accuracy_metric"] == ["greedy"]


def test_report_markdown_and_plots_are_written(tmp_path):
    _fake_run(tmp_path)
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "synthetic-heldout" in md and "greedy" in md and "Curation funnel" in md
    for png in ("accuracy.png", "loss.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert "10.0%" in render_table(build_report(tmp_path))


def test_the_accuracy_plot_takes_a_zero_accuracy_whose_stored_bound_is_above_it(tmp_path):
    """report.json from before the Wilson bounds were kept around p: 0% with a lower bound of 5.6e-17."""
    at_zero = {"accuracy": 0.0, "ci95": [5.551115123125783e-17, 0.39]}
    report = {"benchmarks": {"synthetic-heldout": {}}, "accuracy_metric": ["greedy"],
              "rounds": [{"round": r, "label": label, "benchmarks": {"synthetic-heldout": at_zero}}
                         for r, label in ((0, "base"), (1, "ssb"))]}
    data = plot_accuracy(report, tmp_path / "accuracy.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_report_shows_accuracy_per_round(tmp_path):
    _fake_run(tmp_path, rounds=2)
    report = write_report(tmp_path)
    assert [(r["round"], r["label"]) for r in report["rounds"]] == [(0, "base"), (1, "round-1"), (2, "ssb")]
    assert [c["round"] for c in report["curation"]] == [1, 2]
    assert "Accuracy per round" in (tmp_path / "report.md").read_text()


def test_report_says_so_when_the_student_is_not_better(tmp_path):
    _fake_run(tmp_path)
    results = {"base": _results("base", 5), "ssb": _results("ssb", 3)}
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    report = write_report(tmp_path)
    assert report["benchmarks"]["synthetic-heldout"]["verdict"] == "lower"
    assert "not better" in (tmp_path / "report.md").read_text()


def test_report_of_an_empty_run_dir_still_writes_files(tmp_path):
    report = write_report(tmp_path)
    assert report["benchmarks"] == {} and (tmp_path / "report.md").exists()
    assert report["diagnostics"] == {"rounds": [], "answered_share": {}}
    assert "Diagnostics" not in (tmp_path / "report.md").read_text()


def test_report_shows_the_diagnostics_of_each_round(tmp_path):
    from tests.ssb.test_diagnostics import make_store, write_zero_shot, KEPT, SKIPPED
    from ssb.layout import RunLayout

    _fake_run(tmp_path)
    make_store(tmp_path, KEPT, SKIPPED)
    write_zero_shot(RunLayout(tmp_path), 1, {"p0": True, "p1": False, "p6": False, "p7": False})
    report = write_report(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    (d,) = saved["diagnostics"]["rounds"]
    assert (d["round"], d["model"], d["mixed_share"], d["acceptance_rate"]) == (1, "base", 0.8, 0.5)
    assert d["zero_shot"]["accuracy"] == 0.25 and abs(d["zero_shot"]["gap"] - 0.5) < 1e-9
    # _results: 2 of each problem's 3 answers (2 samples, greedy) have a final answer
    assert saved["diagnostics"]["answered_share"] == {"base": {"synthetic-heldout": 2 / 3},
                                                      "ssb": {"synthetic-heldout": 2 / 3}}
    assert report["rounds"][0]["benchmarks"]["synthetic-heldout"]["answered_share"] == 2 / 3
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## Diagnostics"):md.index("## Training")]
    for text in ("### Round 1: curated by base", "| share mixed | 80.0% (8 of 10) |",
                 "| teacher acceptance rate | 50.0% (4 of 8) |", "| teacher accuracy with hints | 62.5% (5 of 8) |",
                 "4 of the 8 mixed problems (a fixed-seed draw)", "**+50.0 pts**", "### Answered share",
                 "| ssb | 66.7% |"):
        assert text in section, text
    assert "gap +50.0 pts" in render_table(report)


def test_report_without_a_zero_shot_pass_still_shows_the_curation_diagnostics(tmp_path):
    from tests.ssb.test_diagnostics import make_store, KEPT, SKIPPED

    _fake_run(tmp_path)
    make_store(tmp_path, KEPT, SKIPPED)
    report = write_report(tmp_path)
    (d,) = report["diagnostics"]["rounds"]
    assert d["mixed"] == 8 and d["zero_shot"] is None
    assert "no zero-shot pass in this run directory" in (tmp_path / "report.md").read_text()


def test_report_names_the_settings_each_round_was_trained_with(tmp_path):
    from ssb.config import dump_config, load_config

    _fake_run(tmp_path, rounds=2)
    (tmp_path / "train" / "config.yaml").write_text(dump_config(load_config(None, ["train.lr=1e-4", "train.epochs=1"])))
    report = write_report(tmp_path)
    first, second = report["training"]
    assert first["settings"]["lr"] == 1e-4 and first["settings"]["epochs"] == 1
    assert "log_every" not in first["settings"]  # how it ran is not what it learned
    assert second["settings"] is None  # round 2 left no train/config.yaml
    md = (tmp_path / "report.md").read_text()
    assert "- round 1: train.lr=0.0001, train.epochs=1, " in md and "- round 2: – (no train/config.yaml)" in md


def test_report_has_a_cost_section_by_stage_with_training_and_evaluation_beside_it(tmp_path):
    from ssb.cost import cost_object

    _fake_run(tmp_path)
    summary = json.loads((tmp_path / "curation_summary.json").read_text())
    summary["cost"] = cost_object({"rollout_engine_seconds": 20.0, "teacher_engine_seconds": 5.0, "rollout_tokens": 4000,
                                   "teacher_tokens": 900, "kept": 5, "processed": 16, "wall_seconds": 30.0,
                                   "verify_seconds": 1.5, "startup_seconds": 9.0, "stopped_by": "max_kept"})
    (tmp_path / "curation_summary.json").write_text(json.dumps(summary))
    report = write_report(tmp_path)
    cost = json.loads((tmp_path / "report.json").read_text())["cost"]
    assert cost["rounds"][0]["curation"]["stages"]["teacher"] == {"engine_seconds": 5.0, "tokens": 900}
    assert cost["rounds"][0]["train_seconds"] == 12.0 and cost["evaluation"]["ssb"]["tokens"] == 100
    assert cost["projection"] is None  # no config, no store: nothing to project from
    md = (tmp_path / "report.md").read_text()
    assert "## Cost" in md and "| 1 | 4000, 20.0 | 900, 5.0 | 1.5 | 9.0 | 980, 5.0 | max_kept | 12.0 |" in md
    assert report["cost"] == cost


def test_a_run_that_curated_a_sample_reports_what_the_whole_set_would_cost(tmp_path):
    from ssb.config import dump_config, load_config
    from ssb.store import LogitStore
    from ssb.trace import ProblemTrace

    _fake_run(tmp_path)
    cfg = load_config(None, [f"run_dir={tmp_path}", "data.synthetic.n=40", "data.limit=4"])
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    store = LogitStore.create_or_resume(cfg.store_dir, config_hash="h", model="m", tokenizer="t", top_k=2)
    skipped = {f"p{i}": "no_correct_rollout" for i in range(4)}
    store.append([], skipped, [ProblemTrace(f"p{i}", "q", "a", "", "no_correct_rollout", rollout_tokens=100,
                                            engine_seconds=2.0) for i in range(4)])
    report = write_report(tmp_path)
    projection = report["cost"]["projection"]
    assert projection["problems"] == 40 and projection["pilot_problems"] == 4
    assert projection["tokens"] == 4000 and projection["engine_seconds"] == 80.0
    assert "The whole data set (40 problems)" in (tmp_path / "report.md").read_text()
