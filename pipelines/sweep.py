"""Several training settings on one curated store, side by side: `ssb sweep`.

    ssb sweep --config configs/default.yaml --run-dir runs/sweep train.ce_weight=0,0.5,1 train.temperature=1,2
    ssb sweep --config configs/default.yaml --run-dir runs/sweep train.ce_weight=0,1 --rounds 1,2 eval.limit=100

An override whose value has a comma outside brackets and quotes is a sweep axis; every
combination of the axes' values (times each of `--rounds`) is a setting (pipelines/sweep_plan.py:
the grammar and the plan, every setting's config validated before anything runs). The stages are
`ssb run`'s (pipelines/stages.py):

- The store is curated once, as `ssb run` lays out round 1: <run_dir>/curated/ (resumes like
  `ssb curate`; a run directory of an earlier `ssb run` lends its store).
- Each training setting has a directory <run_dir>/sweep/<name>/ with the layout of an
  `ssb run --rounds R` run directory: round 1 trains there on the shared store, round r ≥ 2
  curates in round-<r>/ with round r-1's adapter and trains on that store. The settings
  `x, rounds=1` and `x, rounds=2` share that directory, so round 1 of `x` trains once.
- The base model and each setting's last student are evaluated in one job on eval.benchmarks
  (pipelines/evaluate.py), filed in <run_dir>/eval/results.json under "base" and the settings'
  names, each with its evaluation key in eval/keys.json.
- <run_dir>/sweep.md, sweep.json and sweep.png compare them (pipelines/sweep_render.py).

Re-running redoes exactly the stages whose key changed and says, per stage, what it reused or
redoes and why: a finished training with the same settings is kept and a stopped one resumes; a
setting's directory trained with other settings (say another train.epochs for all) is trained
again, or with `--on-change refuse` the sweep stops with a line naming the change; a label is
evaluated again only when its evaluation key (eval settings, benchmark, adapter content) changed.
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.stages import bootstrap, curate_round, evaluate_or_reuse, say
from pipelines.sweep_plan import (BASE, STAGE, Axis, Setting, SweepPlan, parse_rounds, plan_sweep, setting_name,
                                  split_axes, split_values)
from pipelines.sweep_render import build_sweep, render_text, write_sweep

__all__ = ["Axis", "Setting", "SweepPlan", "build_sweep", "parse_rounds", "plan_sweep", "render_text", "run_sweep",
           "setting_name", "split_axes", "split_values"]


def chains(plan: SweepPlan) -> dict[str, list[Setting]]:
    """Each training directory's settings: `x, rounds=1` and `x, rounds=2` share one chain."""
    out: dict[str, list[Setting]] = {}
    for s in plan.settings:
        out.setdefault(s.train_name, []).append(s)
    return out


def run_sweep(plan: SweepPlan, *, progress: bool = True, on_change: str = "retrain") -> dict[str, Any]:
    """Curates once, trains each setting, evaluates base and students; returns the comparison
    (also written to <run_dir>/sweep.{md,json,png})."""
    start = time.perf_counter()
    base, layout = plan.base, plan.layout
    layout.local(STAGE)
    todo = chains(plan)
    say(f"== sweep: {len(plan.settings)} settings ({len(todo)} trainings"
        f"{', rounds ' + ','.join(map(str, plan.rounds)) if plan.rounds != [1] else ''}) in {layout.root}")
    say(f"== curate (the shared store: {layout.curated})")
    curate_round(base, 1, None, progress=progress, on_change=on_change)
    adapters: dict[str, str | None] = {}
    for i, (train_name, settings) in enumerate(todo.items(), start=1):
        finals = bootstrap(settings[0].cfg, max(s.rounds for s in settings), title=f" [{i}/{len(todo)}] {train_name}",
                           curated=True, progress=progress, on_change=on_change)
        adapters.update({s.name: finals.get(s.rounds) for s in settings})
    students = {name: adapter for name, adapter in adapters.items() if adapter is not None}
    evaluate_or_reuse(base, {BASE: None, **students}, progress=progress, on_change=on_change)
    sweep = build_sweep(plan)
    sweep["seconds"] = time.perf_counter() - start
    return write_sweep(plan, sweep)
