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
Re-running a finished or stopped run reuses what is done: curation resumes from its store,
a finished training (train/summary.json and adapter/) is kept, a stopped one resumes, and a
zero-shot pass over the same problems is not redone.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from typing import Any

from ssb.config import RunConfig
from ssb.layout import round_name

log = logging.getLogger(__name__)

# Evaluation and the report keep their files with local file operations (ssb/layout.py).
STAGE = "ssb run (curate, train, evaluate, report)"


def round_config(cfg: RunConfig, r: int) -> RunConfig:
    if r == 1:
        return cfg
    return cfg.model_copy(update={"run_dir": cfg.layout.round(r).root})


def _curate(cfg: RunConfig, adapter: str | None, progress: bool) -> Any:
    from pipelines.curate import run_curation

    if adapter is None:
        return run_curation(cfg, progress=progress)
    if "adapter" not in inspect.signature(run_curation).parameters:
        raise ValueError("--rounds > 1 needs pipelines.curate.run_curation(cfg, adapter=DIR) (rollouts and teacher "
                         "served by the base model + that LoRA adapter); this checkout's curation has no such "
                         "parameter yet")
    return run_curation(cfg, progress=progress, adapter=adapter)


def _zero_shot_set(cfg: RunConfig, r: int, adapter: str | None, model: str) -> Any:
    """Round r's zero-shot pass as an ExtraSet of the final evaluation: the model that curated
    the round (`adapter`, None: the base model; evaluated as `model`) answers the round's mixed problems as the
    evaluation asks the student, greedy only, into <round>/diagnostics/. None when there is
    nothing to do (no mixed problem, or the same problems done before)."""
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
    if zero_shot_ids(layout, r) == sorted(p.id for p in problems):
        log.warning("%s: round %d's zero-shot pass over these %d problems is done; reusing it",
                    layout.diagnostics.root, r, len(problems))
        return None
    path = layout.diagnostic_problems
    write_problems(path, problems)
    return ExtraSet(model=model, adapter=adapter, label=zero_shot_label(r), benchmark=benchmark_key(str(path)),
                    problems=problems, layout=layout.diagnostics)


def _train(cfg: RunConfig) -> str:
    from pipelines.distill import run_distillation

    layout = cfg.layout
    out = layout.local(STAGE)
    if layout.train_summary.exists() and layout.adapter_config.exists():
        log.warning("%s: training already finished; reusing %s", out, layout.adapter)
        return str(layout.adapter)
    resume = layout.train_experiment.exists()
    summary = run_distillation(cfg, resume=resume)
    print(summary.table(), flush=True)
    return summary.adapter_dir


def run_pipeline(cfg: RunConfig, *, rounds: int = 1, progress: bool = True, skip_base: bool = False,
                 diagnostics: bool | None = None) -> dict[str, Any]:
    """Runs every stage and returns the report (also written to <run_dir>/report.{md,json}).
    `diagnostics` (None: `eval.diagnostics`): each round's zero-shot pass (one greedy answer
    per mixed problem, in the final evaluation); without it the report's diagnostics lack the
    student's zero-shot accuracy and the gap."""
    from pipelines.evaluate import load_results, run_evaluation
    from ssb.report import write_report

    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: need at least 1")
    start = time.perf_counter()
    layout = cfg.layout
    out = layout.local(STAGE)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    adapters: list[str] = []
    for r in range(1, rounds + 1):
        rcfg = round_config(cfg, r)
        tag = "" if rounds == 1 else f" (round {r})"
        t0 = time.perf_counter()
        print(f"== curate{tag}", flush=True)
        summary = _curate(rcfg, adapters[-1] if adapters else None, progress)
        print(summary.table(), flush=True)
        if summary.store.get("rows", 0) == 0 and r > 1:
            # The earlier rounds' students are still worth evaluating and reporting.
            print(f"round {r} kept no examples: stopping after round {r - 1} "
                  f"(see {rcfg.layout.curation_summary})", flush=True)
            break
        if summary.store.get("rows", 0) == 0:
            raise RuntimeError(f"curation{tag} kept no examples: nothing to train on (see "
                               f"{rcfg.layout.curation_summary}; try more rollouts, more problems or easier ones)")
        t1 = time.perf_counter()
        suffix = "" if rounds == 1 else f" round {r}"
        timings[f"curate{suffix}"] = t1 - t0
        print(f"== train{tag}", flush=True)
        adapters.append(_train(rcfg))
        timings[f"train{suffix}"] = time.perf_counter() - t1

    labels: dict[str, str | None] = {}
    have = load_results(out)
    if not (skip_base and all(b in have.get("base", {}) for b in _keys(cfg))):
        labels["base"] = None
    names = ["base"] + [("ssb" if r == len(adapters) else round_name(r)) for r in range(1, len(adapters) + 1)]
    for name, adapter in zip(names[1:], adapters):
        labels[name] = adapter
    zero_shots: list[tuple[int, Any]] = []  # (round, its ExtraSet)
    if cfg.eval.diagnostics if diagnostics is None else diagnostics:
        # Round r (each trained one) was curated by the model before it: base, then round r-1's.
        for r in range(1, len(adapters) + 1):
            curating = adapters[r - 2] if r > 1 else None
            if (x := _zero_shot_set(round_config(cfg, r), r, curating, names[r - 1])) is not None:
                zero_shots.append((r, x))
    print("== evaluate " + ", ".join(labels) + (" (and the zero-shot diagnostics)" if zero_shots else ""), flush=True)
    t3 = time.perf_counter()
    ev = run_evaluation(cfg, labels, progress=progress, extras=[x for _, x in zero_shots],
                        merged_elsewhere=[lay.merged for _, lay in layout.rounds()])
    print(ev.table(), flush=True)
    for r, zero_shot in zero_shots:
        result = ev.extras[zero_shot.label]
        print(f"zero-shot ({'base' if r == 1 else f'round {r - 1} student'}, greedy) on round {r}'s "
              f"{result.n} mixed problems: {100 * result.accuracy:.1f}%", flush=True)
    timings["eval"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - start
    layout.timings.write_text(json.dumps(timings, indent=2))
    return write_report(out)


def _keys(cfg: RunConfig) -> list[str]:
    from pipelines.evaluate import benchmark_key

    return [benchmark_key(b) for b in cfg.eval.benchmarks]
