"""The Cost section of a run's report: curation by stage, training and evaluation beside it, and,
when the run curated a sample of its data set, what the whole set would cost (ssb/estimate.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ssb.layout import RunLayout

log = logging.getLogger(__name__)


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def build_cost(layout: RunLayout, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """report.json's `cost`: per round the curation's cost object and the training's seconds;
    the evaluation's seconds and tokens per model; the projection for the whole data set."""
    rounds = []
    for r, d in layout.rounds():
        curation = (_read(d.curation_summary) or {}).get("cost")
        train = _read(d.train_summary) or {}
        if curation or train:
            rounds.append({"round": r, "curation": curation, "train_seconds": train.get("wall_seconds"),
                           "train_steps": train.get("steps")})
    evaluation = {label: {"seconds": round(sum(d.get("seconds", 0.0) for d in per.values()), 1),
                          "tokens": sum(d.get("tokens", 0) for d in per.values())}
                  for label, per in results.items()}
    return {"rounds": rounds, "evaluation": evaluation, "projection": projection(layout)}


def projection(layout: RunLayout) -> dict[str, Any] | None:
    """The estimate for the whole data set of round 1's curation when it curated a sample of it
    (`data.limit`), else None. Never fails a report: a data set that cannot be counted here
    (a hub dataset offline, say) leaves the projection out."""
    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.estimate import estimate, examples_per_step, load_pilot

    if not layout.config.is_file() or not Path(layout.manifest).is_file():
        return None
    try:
        cfg = load_config(layout.config)
        if cfg.data.limit is None:
            return None
        whole = len(load_problems(cfg.data.model_copy(update={"limit": None}))[0])
        pilot = load_pilot(str(layout.root))
        if whole <= len(pilot.problems):
            return None
        e = estimate(pilot, whole, engines=cfg.engine.replicas, epochs=cfg.train.epochs,
                     examples_per_step=examples_per_step(cfg.train))
    except Exception as exc:  # noqa: BLE001 - the rest of the report matters more than this estimate
        log.warning("report: no projection for the whole data set (%s)", exc)
        return None
    return e.as_dict()


def render_cost(cost: dict[str, Any] | None) -> list[str]:
    if not cost or not (cost["rounds"] or cost["evaluation"]):
        return []
    out = ["", "## Cost", "",
           "Engine seconds are the engine's busy time, split between the stages in proportion to their requests "
           "in flight; they add up to the engine's busy time (curation_summary.json's `cost`).", "",
           "| round | rollouts: tokens, engine s | teacher: tokens, engine s | verifier s | start-up s | "
           "per kept example: tokens, engine s | stopped by | training s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in cost["rounds"]:
        c = r["curation"]
        train = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        if not c:
            out.append(f"| {r['round']} | – | – | – | – | – | – | {train} |")
            continue
        ro, te, kept = c["stages"]["rollout"], c["stages"]["teacher"], c["per_kept"]
        per_kept = "–" if kept["tokens"] is None else f"{kept['tokens']:.0f}, {kept['engine_seconds']:.1f}"
        out.append(f"| {r['round']} | {ro['tokens']}, {ro['engine_seconds']:.1f} | {te['tokens']}, "
                   f"{te['engine_seconds']:.1f} | {c['verify_seconds']:.1f} | {c['startup_seconds']:.1f} | {per_kept} | "
                   f"{c.get('stopped_by') or '–'} | {train} |")
    if cost["evaluation"]:
        out += ["", "Evaluation: " + "; ".join(f"{label} {e['tokens']} tokens in {e['seconds']:.1f} s"
                                              for label, e in cost["evaluation"].items()) + "."]
    p = cost.get("projection")
    if p:
        from ssb.estimate import Estimate, render

        out += ["", f"The whole data set ({p['problems']} problems), projected from this run's "
                f"{p['pilot_problems']} (`ssb estimate --run-dir RUN --problems {p['problems']}` for other engines "
                "and prices):", "", "```text", render(Estimate(**p)), "```"]
    return out
