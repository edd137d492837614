"""Diagnostics that predict SSB's gain, per curation round, from the files a run leaves behind.

The student is trained on the teacher's answers to the mixed problems (those with right and
wrong rollouts), so what it gains depends on how much better the teacher (the same model
shown a right and a wrong attempt) does on them than the model does alone; published work
finds the final gain tracks this gap. Per round r:

- share mixed: mixed problems / problems curated (from the logit store's manifest, so a
  resumed curation counts every problem once);
- teacher acceptance rate: accepted / mixed;
- teacher accuracy with hints: mixed problems whose teacher answer finished and verified,
  counted before the judge's hint check (accepted + teacher_mentions_hints) / mixed. The store
  keeps one outcome per problem, the first rejected sample's when none was accepted: with
  curate.teacher.n > 1 a correct later sample is seen only when it was accepted, so the share
  is then a lower bound;
- rollout accuracy (few-shot): the share of the mixed problems' rollouts that verified, under
  the tutor's few-shot prompt (curation_summary.json). Not the student's prompt, so not the
  zero-shot accuracy; only known when one curation invocation did every problem;
- student zero-shot accuracy: the model that curated round r (the base model in round 1,
  round r-1's student after) answering the bare question with the student prompt, greedy,
  exactly as the evaluation does (`ssb run` evaluates <round>/diagnostics/curated_problems.jsonl
  into <round>/diagnostics/eval/, apart from the run's benchmarks);
- gap: teacher accuracy with hints − student zero-shot accuracy, on the same problems.

The zero-shot pass covers the mixed problems, not the kept ones: kept problems are those the
teacher got right, so on them the teacher's accuracy is 100% by construction and a gap would
only measure the student. At most MAX_PROBLEMS of them are evaluated (a fixed-seed draw) to
bound the pass's cost; the teacher's accuracy is then taken over the same draw.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

from ssb.eval_table import read_records
from ssb.layout import RunLayout, round_name
from ssb.records import Problem, SkipReason

# The pass costs an engine start and one greedy answer per problem: 64 keep it near a minute
# and a half on a 2-core CPU, while a Wilson interval over 64 is still ±12 points at most.
MAX_PROBLEMS = 64
KEPT = "kept"
# Skip reasons of problems the teacher answered: with the kept ones, the mixed problems.
TEACHER_REASONS = (SkipReason.TEACHER_WRONG.value, SkipReason.TEACHER_NO_ANSWER.value,
                   SkipReason.TEACHER_MENTIONS_HINTS.value, SkipReason.TEACHER_TRUNCATED.value)
# Outcomes whose teacher answer finished and verified (the judge refused the hint-mentioning ones).
TEACHER_CORRECT = (KEPT, SkipReason.TEACHER_MENTIONS_HINTS.value)


def zero_shot_label(r: int) -> str:
    """The evaluation label of round r's zero-shot pass."""
    return f"zero-shot-r{r}"


def curating_model(r: int) -> str:
    """Which model curated round r, named as the report labels it."""
    return "base" if r == 1 else round_name(r - 1)


def store_outcomes(curated: str) -> dict[str, str] | None:
    """problem id → "kept" or its skip reason, for every problem committed to the store; None
    when there is no store."""
    from ssb.store import LogitStore, StoreError

    try:
        store = LogitStore.open(curated, allow_empty=True)
    except (StoreError, FileNotFoundError):
        return None
    outcomes = {pid: reason for entry in store.manifest["shards"] for pid, reason in entry["skipped"].items()}
    outcomes.update({pid: KEPT for pid in store.kept_ids()})
    return outcomes


def mixed_ids(outcomes: dict[str, str]) -> list[str]:
    return sorted(pid for pid, o in outcomes.items() if o == KEPT or o in TEACHER_REASONS)


def pick(ids: Iterable[str], seed: int, limit: int = MAX_PROBLEMS) -> list[str]:
    """At most `limit` of `ids`, the same ones on every machine and rerun."""
    ids = sorted(ids)
    if len(ids) <= limit:
        return ids
    return sorted(random.Random(f"{seed}:diagnostics").sample(ids, limit))


def write_problems(path: Path, problems: list[Problem]) -> None:
    """The problems as an evaluation reads a .jsonl benchmark ({id, question, answer})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n"
                           for p in problems))
    tmp.replace(path)



def zero_shot_result(layout: RunLayout, r: int) -> dict[str, Any] | None:
    """Round r's zero-shot BenchmarkResult (as a dict), from its diagnostics evaluation."""
    path = layout.diagnostics.eval_results
    if not path.exists():
        return None
    per = json.loads(path.read_text()).get(zero_shot_label(r)) or {}
    return next(iter(per.values()), None)


def zero_shot_ids(layout: RunLayout, r: int) -> list[str] | None:
    """The ids the zero-shot pass answered, from its per-problem outputs."""
    result = zero_shot_result(layout, r)
    if result is None:
        return None
    path = layout.diagnostics.eval_outputs(zero_shot_label(r), result["benchmark"])
    return sorted(record.id for record in read_records(path)) if path.exists() else None


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


def _teacher_samples(layout: RunLayout) -> int | None:
    import yaml

    if not layout.config.exists():
        return None
    try:
        cfg = yaml.safe_load(layout.config.read_text()) or {}
        return int(cfg["curate"]["teacher"]["n"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def round_diagnostics(layout: RunLayout, r: int) -> dict[str, Any] | None:
    """Round r's diagnostics (module doc); None when the round has no store."""
    outcomes = store_outcomes(layout.curated)
    if outcomes is None:
        return None
    mixed = mixed_ids(outcomes)
    accepted = sum(outcomes[p] == KEPT for p in mixed)
    correct = sum(outcomes[p] in TEACHER_CORRECT for p in mixed)
    teacher_n = _teacher_samples(layout)
    summary = json.loads(layout.curation_summary.read_text()) if layout.curation_summary.exists() else {}
    complete = summary.get("already_done", 0) == 0 and "mixed_rollouts" in summary
    out: dict[str, Any] = {
        "round": r,
        "model": curating_model(r),
        "problems": len(outcomes),
        "mixed": len(mixed),
        "mixed_share": _share(len(mixed), len(outcomes)),
        "accepted": accepted,
        "acceptance_rate": _share(accepted, len(mixed)),
        "teacher_samples": teacher_n,
        "teacher_correct": correct,
        "teacher_accuracy": _share(correct, len(mixed)),
        "teacher_accuracy_is_lower_bound": teacher_n is None or teacher_n > 1,
        "rollout_accuracy_fewshot": (_share(summary["mixed_rollouts_correct"], summary["mixed_rollouts"])
                                     if complete else None),
        "zero_shot": None,
    }
    result = zero_shot_result(layout, r)
    ids = zero_shot_ids(layout, r)
    if result is not None and ids:
        same = sum(outcomes.get(p) in TEACHER_CORRECT for p in ids)
        teacher_same = same / len(ids)
        out["zero_shot"] = {
            "label": zero_shot_label(r), "benchmark": result["benchmark"], "n": result["n"],
            "metric": result["metric"], "accuracy": result["accuracy"], "ci95": list(result["ci95"]),
            "answered_share": result.get("answered_share"),
            "all_mixed": len(ids) == len(mixed) and set(ids) == set(mixed),
            "teacher_correct": same,
            "teacher_accuracy": teacher_same,
            "gap": teacher_same - result["accuracy"],
        }
    return out


def answered_shares(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """label → benchmark → the share of drawn answers (samples and greedy) with a final answer."""
    return {label: {b: d["answered_share"] for b, d in per.items() if d.get("answered_share") is not None}
            for label, per in results.items()}


def build_diagnostics(run_dir: str | Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    rounds = [d for d in (round_diagnostics(lay, r) for r, lay in layout.rounds()) if d is not None]
    return {"rounds": rounds, "answered_share": answered_shares(results)}
