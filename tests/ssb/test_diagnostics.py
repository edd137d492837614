"""The per-round diagnostics (ssb/diagnostics.py) from crafted run files, and `ssb run`'s
zero-shot pass (pipelines/run.py) with the evaluation replaced by a stand-in: no Ray, no engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ssb.data import load_problems
from ssb.diagnostics import (MAX_PROBLEMS, build_diagnostics, mixed_ids, pick, round_diagnostics, store_outcomes,
                             write_problems, zero_shot_label)
from ssb.layout import RunLayout
from ssb.records import EvalRecord, Problem, Verdict
from ssb.scoring import ProblemOutcome, score
from ssb.store import LogitStore
from tests.ssb.test_store import RUN, make_example

# 10 problems: 4 kept; 6 skipped, 4 of them after the teacher answered (mixed).
SKIPPED = {"p4": "no_correct_rollout", "p5": "no_incorrect_rollout", "p6": "teacher_mentions_hints",
           "p7": "teacher_answer_wrong", "p8": "teacher_truncated", "p9": "teacher_no_answer"}
KEPT = ["p0", "p1", "p2", "p3"]


def make_store(root: Path, kept: list[str], skipped: dict[str, str]) -> None:
    """A committed store, in two shards as a resumed curation leaves it."""
    rng = np.random.default_rng(0)
    store = LogitStore.create_or_resume(RunLayout(root).curated, **RUN)
    half = len(kept) // 2
    store.append([make_example(p, rng) for p in kept[:half]], dict(list(skipped.items())[:2]))
    store.append([make_example(p, rng) for p in kept[half:]], dict(list(skipped.items())[2:]))


def make_round(root: Path, *, teacher_n: int = 1, summary: dict[str, Any] | None = None,
               zero_shot: dict[str, bool] | None = None, r: int = 1) -> RunLayout:
    """A round's files: store, config, curation summary and (given {id: greedy correct}) its zero-shot pass."""
    layout = RunLayout(root)
    make_store(root, KEPT, SKIPPED)
    layout.config.write_text(f"curate:\n  teacher: {{n: {teacher_n}, temperature: 0.4}}\n")
    layout.curation_summary.write_text(json.dumps(summary if summary is not None else {
        "problems": 10, "already_done": 0, "processed": 10, "kept": 4, "mixed": 8,
        "mixed_rollouts": 32, "mixed_rollouts_correct": 12, "rollouts": 40, "rollouts_correct": 16}))
    if zero_shot is not None:
        write_zero_shot(layout, r, zero_shot)
    return layout


def write_zero_shot(layout: RunLayout, r: int, verdicts: dict[str, bool], answered: int = 1) -> None:
    """What the evaluation leaves for a greedy-only pass: results.json and the per-problem outputs."""
    from pipelines.evaluate import merge_results, write_outputs

    label, key = zero_shot_label(r), "curated_problems"
    d = layout.diagnostics
    records = [EvalRecord(key, label, pid, "", "", greedy_verdict=Verdict.CORRECT if ok else Verdict.INCORRECT)
               for pid, ok in verdicts.items()]
    write_outputs(d, label, key, records)
    outcomes = [ProblemOutcome(greedy=ok, answered=answered) for ok in verdicts.values()]
    merge_results(d.eval_results, {label: {key: score(key, label, outcomes)}})


def test_outcomes_and_mixed_problems_come_from_the_store(tmp_path):
    make_store(tmp_path, KEPT, SKIPPED)
    outcomes = store_outcomes(RunLayout(tmp_path).curated)
    assert outcomes is not None and len(outcomes) == 10
    assert {p for p, o in outcomes.items() if o == "kept"} == set(KEPT)
    assert mixed_ids(outcomes) == ["p0", "p1", "p2", "p3", "p6", "p7", "p8", "p9"]
    assert store_outcomes(str(tmp_path / "nowhere")) is None


def test_round_diagnostics_share_mixed_acceptance_and_teacher_accuracy(tmp_path):
    d = round_diagnostics(make_round(tmp_path, teacher_n=1), 1)
    assert d is not None
    assert (d["problems"], d["mixed"], d["accepted"], d["teacher_correct"]) == (10, 8, 4, 5)
    assert d["mixed_share"] == 0.8 and d["acceptance_rate"] == 0.5
    # accepted + refused only for mentioning the hints: the answers that verified
    assert d["teacher_accuracy"] == 5 / 8 and not d["teacher_accuracy_is_lower_bound"]
    assert d["rollout_accuracy_fewshot"] == 12 / 32
    assert d["model"] == "base" and d["zero_shot"] is None


def test_several_teacher_samples_make_the_teacher_accuracy_a_lower_bound(tmp_path):
    d = round_diagnostics(make_round(tmp_path, teacher_n=4), 1)
    assert d is not None and d["teacher_samples"] == 4 and d["teacher_accuracy_is_lower_bound"]


def test_a_resumed_curation_leaves_the_rollout_accuracy_unknown(tmp_path):
    summary = {"problems": 10, "already_done": 6, "processed": 4, "mixed": 3, "mixed_rollouts": 12,
               "mixed_rollouts_correct": 5}
    d = round_diagnostics(make_round(tmp_path, summary=summary), 1)
    assert d is not None and d["rollout_accuracy_fewshot"] is None
    assert d["mixed"] == 8  # the store still counts every problem once


def test_the_gap_is_taken_on_the_problems_the_student_answered(tmp_path):
    # The zero-shot pass answered 4 of the 8 mixed problems: 2 kept, 1 hint-mentioning, 1 wrong.
    verdicts = {"p0": True, "p1": False, "p6": False, "p7": False}
    d = round_diagnostics(make_round(tmp_path, zero_shot=verdicts), 1)
    assert d is not None
    z = d["zero_shot"]
    assert z is not None and z["label"] == "zero-shot-r1" and z["n"] == 4 and z["metric"] == "greedy"
    assert z["accuracy"] == 0.25 and z["teacher_correct"] == 3 and z["teacher_accuracy"] == 0.75
    assert z["gap"] == pytest.approx(0.5) and not z["all_mixed"]
    lo, hi = z["ci95"]
    assert lo < 0.25 < hi and z["answered_share"] == 1.0


def test_a_zero_shot_pass_over_every_mixed_problem_says_so(tmp_path):
    verdicts = {p: p in ("p0", "p7") for p in ["p0", "p1", "p2", "p3", "p6", "p7", "p8", "p9"]}
    d = round_diagnostics(make_round(tmp_path, zero_shot=verdicts), 1)
    assert d is not None and d["zero_shot"]["all_mixed"]
    assert d["zero_shot"]["teacher_accuracy"] == d["teacher_accuracy"] == 5 / 8
    assert d["zero_shot"]["gap"] == pytest.approx(5 / 8 - 2 / 8)


def test_later_rounds_were_curated_by_the_previous_student(tmp_path):
    make_round(tmp_path, zero_shot={"p0": True})
    make_round(tmp_path / "round-2", zero_shot={"p1": False, "p2": True}, r=2)
    diag = build_diagnostics(tmp_path, {"base": {"b": {"answered_share": 0.5}}, "ssb": {"b": {"answered_share": 1.0}}})
    assert [(d["round"], d["model"], d["zero_shot"]["label"]) for d in diag["rounds"]] == \
        [(1, "base", "zero-shot-r1"), (2, "round-1", "zero-shot-r2")]
    assert diag["rounds"][1]["zero_shot"]["n"] == 2
    assert diag["answered_share"] == {"base": {"b": 0.5}, "ssb": {"b": 1.0}}


def test_pick_draws_at_most_the_limit_with_a_fixed_seed():
    ids = [f"q{i:03d}" for i in range(200)]
    few = pick(ids[:10], seed=0)
    assert few == ids[:10]
    drawn = pick(reversed(ids), seed=0)
    assert len(drawn) == MAX_PROBLEMS and drawn == sorted(drawn) and set(drawn) <= set(ids)
    assert drawn == pick(ids, seed=0) and drawn != pick(ids, seed=1)


def test_written_problems_load_back_as_the_evaluation_reads_them(tmp_path):
    from ssb.config import DataConfig

    problems = [Problem("gsm8k-train-3", "Tom has 3 apples and buys 4. How many?", "7"),
                Problem("x-9", "What is $\\frac{1}{2}+\\frac{1}{4}$?", "\\frac{3}{4}")]
    path = tmp_path / "diagnostics" / "curated_problems.jsonl"
    write_problems(path, problems)
    loaded, report = load_problems(DataConfig(source=str(path), split="test"))
    assert [(p.id, p.question, p.answer) for p in loaded] == [(p.id, p.question, p.answer) for p in problems]
    assert not report.skipped


# -- `ssb run`'s zero-shot pass, the evaluation stood in for ---------------------------------


def answer(zero_shot: Any) -> None:
    """Files a zero-shot set's answers as the evaluation does (pipelines/evaluate.py): a problem
    is answered correctly when its id ends in an even digit."""
    import pipelines.evaluate as evaluate

    records = [EvalRecord(zero_shot.benchmark, zero_shot.model, p.id, p.question, p.answer, extra=0,
                          greedy_answer=p.answer,
                          greedy_verdict=Verdict.CORRECT if int(p.id[-1]) % 2 == 0 else Verdict.INCORRECT)
               for p in zero_shot.problems]
    evaluate.write_outputs(zero_shot.layout, zero_shot.label, zero_shot.benchmark, records)
    outcomes = [ProblemOutcome.of(r) for r in records]
    result = score(zero_shot.benchmark, zero_shot.label, outcomes)
    evaluate.merge_results(zero_shot.layout.eval_results, {zero_shot.label: {zero_shot.benchmark: result}})


def _curated_round(tmp_path: Path) -> Any:
    """A run config on 12 synthetic problems whose store has 5 mixed ones (3 kept)."""
    from ssb.config import load_config

    cfg = load_config(None, [f"run_dir={tmp_path}", "data.synthetic.n=12", "eval.n=4", "eval.limit=50"])
    ids = [p.id for p in load_problems(cfg.data)[0]]
    skipped = {ids[3]: "teacher_answer_wrong", ids[4]: "teacher_mentions_hints",
               **{i: "no_correct_rollout" for i in ids[5:11]}}
    make_store(tmp_path, ids[:3], skipped)
    return cfg, ids[:5]


def test_the_zero_shot_pass_is_a_set_of_the_final_evaluation_filed_apart_from_the_benchmarks(tmp_path):
    from pipelines.run import _zero_shot_set

    cfg, mixed = _curated_round(tmp_path)
    zero_shot = _zero_shot_set(cfg, 1, None, "base")
    assert zero_shot is not None and (zero_shot.label, zero_shot.adapter, zero_shot.model) == ("zero-shot-r1", None,
                                                                                                "base")
    assert zero_shot.layout.root == str(tmp_path / "diagnostics")
    assert sorted(p.id for p in zero_shot.problems) == sorted(mixed)
    written = [json.loads(x) for x in (tmp_path / "diagnostics" / "curated_problems.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in written) == sorted(mixed)
    answer(zero_shot)
    assert not (tmp_path / "eval").exists()  # the run's own results stay the benchmarks'

    d = round_diagnostics(cfg.layout, 1)
    assert d is not None and d["zero_shot"]["n"] == 5 and d["zero_shot"]["all_mixed"]
    assert d["zero_shot"]["teacher_accuracy"] == 4 / 5


def test_a_rerun_reuses_the_zero_shot_pass_unless_the_problems_changed(tmp_path):
    from pipelines.run import _zero_shot_set

    cfg, mixed = _curated_round(tmp_path)
    answer(_zero_shot_set(cfg, 1, None, "base"))
    assert _zero_shot_set(cfg, 1, None, "base") is None
    # A resumed curation that found one more mixed problem: evaluated again, over all six.
    ids = [p.id for p in load_problems(cfg.data)[0]]
    LogitStore.create_or_resume(cfg.layout.curated, **RUN).append([make_example(ids[11], np.random.default_rng(1))])
    again = _zero_shot_set(cfg, 1, None, "base")
    assert again is not None and len(again.problems) == 6
    answer(again)
    d = round_diagnostics(cfg.layout, 1)
    assert d is not None and d["zero_shot"]["n"] == 6


def test_no_mixed_problem_means_no_zero_shot_pass(tmp_path):
    from pipelines.run import _zero_shot_set
    from ssb.config import load_config

    cfg = load_config(None, [f"run_dir={tmp_path}", "data.synthetic.n=4"])
    make_store(tmp_path, [], {p.id: "no_correct_rollout" for p in load_problems(cfg.data)[0]})
    assert _zero_shot_set(cfg, 1, None, "base") is None


def test_curation_counts_the_rollout_verdicts_of_the_mixed_problems(tmp_path):
    """CurationSummary's few-shot rollout counts, over every verified problem and the mixed ones."""
    import time

    from pipelines.curate import CurationRun, CurationSummary
    from ssb.config import load_config
    from ssb.records import ProblemState, Rollout, Selection, SkipReason, Verdict

    def state(pid: str, verdicts: list[Verdict], status: SkipReason, mixed: bool) -> ProblemState:
        rollouts = [Rollout(pid, i, "...", [], None, v) for i, v in enumerate(verdicts)]
        s = ProblemState(Problem(pid, "q", "1"), status=status, rollouts=rollouts, verified=True)
        if mixed:
            s.selection = Selection(rollouts[0], rollouts[-1], None)
            s.teacher_prompt_ids = [1, 2, 3]
        return s

    C, W = Verdict.CORRECT, Verdict.INCORRECT
    states = [state("a", [C, W, W, W], SkipReason.TEACHER_WRONG, mixed=True),
              state("b", [C, C, C, W], SkipReason.TEACHER_MENTIONS_HINTS, mixed=True),
              state("c", [W, W, W, W], SkipReason.NO_CORRECT, mixed=False),
              ProblemState(Problem("d", "q", "1"), status=SkipReason.PROMPT_TOO_LONG)]
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    store = LogitStore.create_or_resume(cfg.layout.curated, **RUN)
    run = CurationRun(cfg, store, "m", "t", "m", [s.problem for s in states], CurationSummary(problems=4),
                      time.perf_counter())
    run.consume([states], progress=False)
    summary = run.close()
    assert (summary.rollouts, summary.rollouts_correct) == (12, 4)
    assert (summary.mixed, summary.mixed_rollouts, summary.mixed_rollouts_correct) == (2, 8, 4)
    assert json.loads(cfg.layout.curation_summary.read_text())["mixed_rollouts_correct"] == 4
