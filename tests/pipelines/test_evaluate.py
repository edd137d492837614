"""Evaluation without an engine: benchmark names → sources, verdict rows → outcomes, results files, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.evaluate import benchmark_key, load_results, merge_results, resolve_benchmark
from ssb.config import DataConfig, load_config
from ssb.data import load_problems, resolved_source
from ssb.eval_table import from_row
from ssb.scoring import ProblemOutcome, score
from tests.conftest import shared_data


def test_named_benchmarks_read_local_copies_under_the_data_root(tmp_path):
    root = shared_data()
    cfg = load_config(None, [f"eval.data_root={root}", "eval.limit=5"])
    assert resolved_source(resolve_benchmark("gsm8k-test", cfg)).source == str(root / "gsm8k")
    assert resolved_source(resolve_benchmark("gsm8k-test", cfg)).split == "test"
    assert resolved_source(resolve_benchmark("math500", cfg)).source == str(root / "math500")
    assert resolve_benchmark("aime24", cfg).limit == 5
    svamp = resolve_benchmark("svamp", cfg)
    assert (svamp.source, svamp.split) == ("svamp", "test")
    problems, _ = load_problems(svamp)
    assert len(problems) == 5 and {p.source for p in problems} == {"svamp"}
    assert problems == load_problems(DataConfig(source=str(root / "svamp" / "test.jsonl"), limit=5))[0]


def test_named_benchmarks_fall_back_to_the_hub_without_a_local_copy(tmp_path, monkeypatch):
    import ssb.datasets

    # no copy anywhere: an empty data root, no $SSB_DATA_ROOT, no repo data/ (a non-editable
    # install), no shared/data
    monkeypatch.delenv("SSB_DATA_ROOT", raising=False)
    monkeypatch.setattr(ssb.datasets, "repo_data", lambda: None)
    monkeypatch.setattr(ssb.datasets, "shared_data_dirs", lambda: [])
    cfg = load_config(None, [f"eval.data_root={tmp_path}"])
    gsm = resolved_source(resolve_benchmark("gsm8k-test", cfg))
    assert (gsm.source, gsm.subset, gsm.split) == ("openai/gsm8k", "main", "test")
    assert resolved_source(resolve_benchmark("math500", cfg)).source == "HuggingFaceH4/MATH-500"
    assert resolved_source(resolve_benchmark("aime24", cfg)).split == "train"  # its only split on the hub
    # SVAMP's hub copy names its fields otherwise: the named source says which to read
    hub = resolved_source(resolve_benchmark("svamp", cfg))
    assert (hub.source, hub.split, hub.question_field, hub.answer_field) == ("ChilleD/SVAMP", "test",
                                                                            "question_concat", "Answer")


def test_synthetic_heldout_uses_test_templates_and_another_seed():
    cfg = load_config(None, ["eval.limit=7", "data.synthetic.difficulty=addsub"])
    src = resolve_benchmark("synthetic-heldout", cfg)
    assert (src.source, src.split, src.synthetic.n, src.synthetic.difficulty) == ("synthetic", "test", 7, "addsub")
    assert src.synthetic.seed != cfg.data.synthetic.seed


def test_any_other_name_is_a_path_or_hub_dataset_with_a_file_safe_key():
    cfg = load_config(None, [])
    assert resolve_benchmark("/data/my set/test.jsonl", cfg).source == "/data/my set/test.jsonl"
    # a file that only names a split is labelled by its directory too
    assert benchmark_key("/data/my set/test.jsonl") == "my_set-test"
    assert benchmark_key("/data/svamp/test.jsonl") == "svamp-test"
    assert benchmark_key("/data/hard_problems.jsonl") == "hard_problems"
    assert benchmark_key("org/dataset") == "dataset"
    assert benchmark_key("math500") == "math500"


def test_a_benchmark_can_be_named_label_equals_source():
    cfg = load_config(None, ["eval.benchmarks=[synthetic-heldout,mine=/data/svamp/test.jsonl]"])
    assert benchmark_key("mine=/data/svamp/test.jsonl") == "mine"
    assert resolve_benchmark("mine=/data/svamp/test.jsonl", cfg).source == "/data/svamp/test.jsonl"
    assert benchmark_key("big=svamp") == "big" and resolve_benchmark("big=svamp", cfg).source == "svamp"


@pytest.mark.parametrize("benchmarks, message", [
    ("[svamp,svamp]", "would share the label 'svamp'"),
    ("[a/test.jsonl,b/a-test.jsonl]", "would share the label 'a-test'"),
    ("[=x.jsonl]", "write name=path"),
    ("[name=]", "write name=path"),
])
def test_benchmarks_that_cannot_be_told_apart_are_refused(benchmarks, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [f"eval.benchmarks={benchmarks}"])


def test_outcome_from_a_saved_row():
    row = {"benchmark": "b1", "label": "base", "id": "p1", "question": "1 + 2?", "answer": "3", "extra": -1,
           "sample_verdicts": ["correct", "incorrect", "no_answer"], "sample_answers": ["3", "4", None],
           "greedy_verdict": "correct", "greedy_answer": "3", "maj_correct": True}
    assert ProblemOutcome.of(from_row(row)) == ProblemOutcome(samples=[True, False, False], greedy=True,
                                                              majority=True, answered=3)
    # no greedy answer asked for, no majority taken: neither is scored
    row.update(greedy_verdict=None, greedy_answer=None, maj_correct=None)
    assert ProblemOutcome.of(from_row(row)) == ProblemOutcome(samples=[True, False, False], answered=2)


def test_results_merge_per_label_and_read_back(tmp_path):
    path = tmp_path / "eval" / "results.json"
    base = score("b1", "base", [ProblemOutcome(samples=[True], greedy=True, majority=True)])
    ssb = score("b1", "ssb", [ProblemOutcome(samples=[False], greedy=False, majority=False)])
    merge_results(path, {"base": {"b1": base}})
    merge_results(path, {"ssb": {"b1": ssb}})
    assert load_results(tmp_path) == {"base": {"b1": base}, "ssb": {"b1": ssb}}


def test_cli_eval_and_run_parse_their_flags():
    from cluster.args import config_from_args
    from cluster.cli import build_parser

    args = build_parser().parse_args(["eval", "--benchmarks", "gsm8k-test, math500", "--adapter", "a",
                                      "--with-base", "eval.n=2"])
    assert (args.adapter, args.with_base) == ("a", True)
    assert config_from_args(args).eval.benchmarks == ["gsm8k-test", "math500"]
    args = build_parser().parse_args(["run", "--rounds", "2", "--run-dir", str(Path("x"))])
    assert args.rounds == 2 and config_from_args(args).run_dir == "x"
