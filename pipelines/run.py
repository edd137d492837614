"""The whole method from one config: curate → train → evaluate base and student → report.

    ssb run --config configs/default.yaml
    ssb run --config configs/default.yaml --rounds 2

Round 1 works in the run directory itself (curated/, train/, adapter/, curation_summary.json).
Round r ≥ 2 works in <run_dir>/round-<r>/ and curates with round r-1's student (its adapter)
as the rollout and teacher model (merged into a copy of the base model on CPU, LoRA
requests on GPUs: `curate.merge_adapter`), then trains a fresh LoRA on the base model from that
store. The evaluation runs once, at the end, over the base model ("base"), each earlier
round's adapter ("round-<r>") and the last one ("ssb"): one LoRA engine for all on GPUs, a
merged copy per adapter on CPU (pipelines/evaluate.py).
The model that curated each round also answers that round's mixed problems zero-shot
(student prompt, greedy; at most ssb.diagnostics.MAX_PROBLEMS of them) on the engine that
evaluates it at the end, filed under <round>/diagnostics/; the report sets this against the
teacher's accuracy with hints on the same problems (ssb/diagnostics.py). Round r ≥ 2's merged
copy of round r-1's adapter is the one its curation made: nothing is merged twice.
Re-running a finished or stopped run redoes exactly the stages whose key changed, and says per
stage what it reused or redoes and why (pipelines/stages.py): curation resumes its store, a
finished training with the same settings is kept and a stopped one resumes, each label's results
are measured again only when their key (eval settings, benchmark, model, adapter content) changed.
A result made with other settings (`train.lr=1e-4` after a run with the default) is redone, or
with `--on-change refuse` the run stops with a line naming the changed setting.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pipelines.stages import bootstrap, evaluate_or_reuse, extra_key, read_keys, round_config, say
from ssb.config import RunConfig
from ssb.layout import round_name

log = logging.getLogger(__name__)

# Evaluation and the report keep their files with local file operations (ssb/layout.py).
STAGE = "ssb run (curate, train, evaluate, report)"
__all__ = ["STAGE", "round_config", "run_pipeline"]


def run_pipeline(cfg: RunConfig, *, rounds: int = 1, progress: bool = True, diagnostics: bool | None = None,
                 on_change: str = "retrain") -> dict[str, Any]:
    """Runs every stage and returns the report (also written to <run_dir>/report.{md,json}).
    `diagnostics` (None: `eval.diagnostics`): each round's zero-shot pass (one greedy answer
    per mixed problem, in the final evaluation); without it the report's diagnostics lack the
    student's zero-shot accuracy and the gap. `on_change`: "retrain" or "refuse" a stage whose
    result came from other settings."""
    from ssb.report import write_report

    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: need at least 1")
    start = time.perf_counter()
    layout = cfg.layout
    out = layout.local(STAGE)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    adapters = bootstrap(cfg, rounds, progress=progress, on_change=on_change, timings=timings)
    last = max(adapters)
    names = {r: "ssb" if r == last else round_name(r) for r in adapters}
    labels: dict[str, str | None] = {"base": None, **{names[r]: a for r, a in adapters.items()}}
    zero_shots = _zero_shot_sets(cfg, adapters, names) if (cfg.eval.diagnostics if diagnostics is None
                                                            else diagnostics) else []
    t0 = time.perf_counter()
    ev = evaluate_or_reuse(cfg, labels, progress=progress, on_change=on_change, extras=[x for _, x in zero_shots],
                           merged_elsewhere=[lay.merged for _, lay in layout.rounds()])
    if ev is not None:
        say(ev.table())
    for r, zero_shot in zero_shots:
        result = ev.extras[zero_shot.label]
        say(f"zero-shot ({'base' if r == 1 else f'round {r - 1} student'}, greedy) on round {r}'s "
            f"{result.n} mixed problems: {100 * result.accuracy:.1f}%")
    timings["eval"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    layout.timings.write_text(json.dumps(timings, indent=2))
    return write_report(out)


def _zero_shot_sets(cfg: RunConfig, adapters: dict[int, str], names: dict[int, str]) -> list[tuple[int, Any]]:
    """(round, its ExtraSet) for each trained round whose zero-shot pass is to do: round r was
    curated by the model before it (base, then round r-1's student)."""
    sets = []
    for r in adapters:
        model = "base" if r == 1 else names[r - 1]
        if (x := _zero_shot_set(round_config(cfg, r), r, adapters.get(r - 1), model)) is not None:
            sets.append((r, x))
    return sets


def _zero_shot_set(cfg: RunConfig, r: int, adapter: str | None, model: str) -> Any:
    """Round r's zero-shot pass as an ExtraSet of the final evaluation: the model that curated
    the round (`adapter`, None: the base model; evaluated as `model`) answers the round's mixed problems as the
    evaluation asks the student, greedy only, into <round>/diagnostics/. None when there is
    nothing to do (no mixed problem, or a pass with the same key done before)."""
    from pipelines.evaluate import ExtraSet, benchmark_key
    from ssb.data import load_problems
    from ssb.diagnostics import mixed_ids, pick, store_outcomes, write_problems, zero_shot_ids, zero_shot_label

    layout = cfg.layout
    wanted = set(pick(mixed_ids(store_outcomes(layout.curated) or {}), seed=cfg.curate.seed))
    problems = [p for p in load_problems(cfg.data)[0] if p.id in wanted] if wanted else []
    if len(problems) != len(wanted):
        log.warning("round %d diagnostics: %d of the store's %d mixed problems are no longer in the data; "
                    "evaluating the rest", r, len(wanted) - len(problems), len(wanted))
    if not problems:
        return None
    path = layout.diagnostic_problems
    x = ExtraSet(model=model, adapter=adapter, label=zero_shot_label(r), benchmark=benchmark_key(str(path)),
                 problems=problems, layout=layout.diagnostics)
    had = read_keys(layout.diagnostics).get(x.label, {}).get(x.benchmark)
    # A pass from before keys were kept counts as done when it answered the same problems.
    if had == extra_key(cfg, x) or (had is None and zero_shot_ids(layout, r) == sorted(p.id for p in problems)):
        say(f"zero-shot round {r}: reuses the pass of {model} over these {len(problems)} problems")
        return None
    write_problems(path, problems)
    return x
