"""`ssb sweep`'s comparison, from the files the sweep left behind (no Ray, no engine): the base
model and each setting's accuracy with 95% intervals and its change from the base model per
benchmark, the training's final loss, steps and seconds, which setting is best and how sure the
evaluation is of it; written to <run_dir>/sweep.md, sweep.json and sweep.png. The formatting and
plotting helpers are the run report's (ssb/report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.sweep_plan import BASE, SweepPlan
from ssb.layout import RunLayout
from ssb.report import accuracy_cell, loss_cell, pyplot, read_json, save_figure, training_stats


def _entry(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("accuracy", "ci95", "n", "metric")}


def _status(chain: RunLayout, rounds: int, evaluated: bool) -> str:
    """Why a setting has numbers or not: evaluated, trained only, or where its rounds stopped."""
    trained = chain.round(rounds).adapter_config.exists()
    if evaluated and trained:
        return "evaluated"
    for r in range(2, rounds + 1):
        cur = read_json(chain.round(r).curation_summary)
        if not trained and cur is not None and (cur.get("store") or {}).get("rows", 0) == 0:
            return f"round {r} kept no examples"
    return "trained, not evaluated" if trained else "not trained"


def _setting_row(s: Any, results: dict[str, Any], base_results: dict[str, Any], benchmarks: list[str]
                 ) -> dict[str, Any]:
    chain = RunLayout(s.cfg.output_dir)
    last = chain.round(s.rounds)
    trained = last.adapter_config.exists()
    # The setting's trainings and its own rounds' curation (not the shared store's).
    seconds = sum(training_stats(chain.round(r))["wall_seconds"] or 0.0 for r in range(1, s.rounds + 1))
    seconds += sum((read_json(chain.round(r).curation_summary) or {}).get("wall_seconds", 0.0)
                   for r in range(2, s.rounds + 1))
    t = training_stats(last) if trained else {"steps": None, "rows": None, "final_loss": None}
    per = results.get(s.name, {}) if trained else {}
    entries: dict[str, Any] = {}
    for b in (b for b in benchmarks if b in per):
        entries[b] = _entry(per[b])
        if b in base_results:
            entries[b]["delta"] = per[b]["accuracy"] - base_results[b]["accuracy"]
    return {"setting": s.name, "overrides": dict(s.values), "rounds": s.rounds, "dir": last.root,
            "adapter": str(last.adapter) if trained else None, "status": _status(chain, s.rounds, s.name in results),
            "benchmarks": entries, "train": {"steps": t["steps"], "rows": t["rows"], "final_loss": t["final_loss"],
                                             "seconds": seconds if trained else None}}


def build_sweep(plan: SweepPlan) -> dict[str, Any]:
    """The comparison from the files the sweep left behind: base first, then each setting."""
    from pipelines.evaluate import benchmark_key

    layout = plan.layout
    results: dict[str, Any] = read_json(layout.eval_results) or {}
    benchmarks = [benchmark_key(b) for b in plan.base.eval.benchmarks]
    base_results = results.get(BASE, {})
    rows: list[dict[str, Any]] = [{"setting": BASE, "overrides": {}, "rounds": 0, "dir": None, "adapter": None,
                                   "status": "evaluated" if base_results else "not evaluated",
                                   "benchmarks": {b: _entry(base_results[b]) for b in benchmarks if b in base_results},
                                   "train": None}]
    rows += [_setting_row(s, results, base_results, benchmarks) for s in plan.settings]
    store = read_json(layout.curation_summary) or {}
    return {
        "run_dir": layout.root,
        "store": {"path": layout.curated, "rows": (store.get("store") or {}).get("rows")},
        "axes": {a.key: list(a.values) for a in plan.axes},
        "rounds": plan.rounds,
        "benchmarks": benchmarks,
        "metric": sorted({e["metric"] for r in rows for e in r["benchmarks"].values() if e.get("metric")}),
        "rows": rows,
        "best": {b: best_of(rows, b) for b in benchmarks},
        "files": {},
    }


def best_of(rows: list[dict[str, Any]], benchmark: str) -> dict[str, Any] | None:
    """The setting with the highest accuracy on `benchmark`, and the settings whose 95% interval
    overlaps its own (this evaluation does not tell those apart from it)."""
    scored = [r for r in rows if r["setting"] != BASE and benchmark in r["benchmarks"]]
    if not scored:
        return None
    top = max(r["benchmarks"][benchmark]["accuracy"] for r in scored)
    leaders = [r for r in scored if r["benchmarks"][benchmark]["accuracy"] == top]
    best = leaders[0]
    lo, hi = best["benchmarks"][benchmark]["ci95"]
    overlaps = [r["setting"] for r in scored if r is not best and r["benchmarks"][benchmark]["ci95"][1] >= lo]
    base = next((r for r in rows if r["setting"] == BASE and benchmark in r["benchmarks"]), None)
    out = {"setting": best["setting"], "accuracy": top, "ci95": [lo, hi], "tied": [r["setting"] for r in leaders[1:]],
           "overlaps": overlaps, "settings": len(scored), "above_base": None}
    if base is not None:
        out["above_base"] = lo > base["benchmarks"][benchmark]["ci95"][1]
    return out


def _verdict(b: str, best: dict[str, Any]) -> str:
    acc = accuracy_cell(best)
    if best["settings"] == 1:
        text = f"{b}: {best['setting']} {acc} (the only setting evaluated)"
    elif best["tied"]:
        text = f"{b}: tied at {acc}: {', '.join([best['setting'], *best['tied']])}: this sweep does not choose"
    elif not best["overlaps"]:
        text = f"{b}: best is {best['setting']} {acc}, its 95% interval apart from every other setting's"
    else:
        text = (f"{b}: highest is {best['setting']} {acc}, but its 95% interval overlaps "
                f"{_names(best['overlaps'])}: this evaluation does not tell them apart (more problems, "
                "eval.limit, narrow the intervals)")
    if best["above_base"] is not None:
        text += ("; above the base model, the intervals apart" if best["above_base"]
                 else "; its interval also overlaps the base model's (not shown to beat it)")
    return text


def verdicts(sweep: dict[str, Any]) -> list[str]:
    """One sentence per benchmark: which setting is best, and how sure this evaluation is of it."""
    return [f"{b}: no setting was evaluated" if sweep["best"].get(b) is None else _verdict(b, sweep["best"][b])
            for b in sweep["benchmarks"]]


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names) if len(names) <= most else ", ".join(names[:most]) + f" and {len(names) - most} more"


def table_cells(sweep: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table, for the markdown file and the console alike."""
    header = ["setting"]
    for b in sweep["benchmarks"]:
        header += [f"{b} (95% CI)", "vs base"]
    header += ["final loss", "steps", "seconds"]
    rows = []
    for r in sweep["rows"]:
        cells = [r["setting"]]
        for b in sweep["benchmarks"]:
            e = r["benchmarks"].get(b)
            if e:
                cells.append(accuracy_cell(e))
            else:  # why a row has no numbers, once, in its first benchmark's column
                cells.append(r["status"] if b == sweep["benchmarks"][0] else "–")
            cells.append(f"{100 * e['delta']:+.1f}" if e and e.get("delta") is not None else "–")
        t = r["train"] or {}
        cells.append(loss_cell(t.get("final_loss")))
        cells.append("–" if t.get("steps") is None else str(t["steps"]))
        cells.append("–" if t.get("seconds") is None else f"{t['seconds']:.0f}")
        rows.append(cells)
    return header, rows


def render_text(sweep: dict[str, Any]) -> str:
    """The table as aligned columns, and the verdicts: what `ssb sweep` prints at the end."""
    header, rows = table_cells(sweep)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in rows]
    out += ["", *verdicts(sweep)]
    return "\n".join(out)


def render_markdown(sweep: dict[str, Any]) -> str:
    header, rows = table_cells(sweep)
    metric = ", ".join(sweep["metric"]) or "none"
    axes = "; ".join(f"`{k}` = {', '.join(v)}" for k, v in sweep["axes"].items()) or "none"
    out = [f"# SSB sweep: {sweep['run_dir']}", "",
           f"Axes: {axes}; rounds: {', '.join(map(str, sweep['rounds']))}. Every setting trained on one store, "
           f"`{sweep['store']['path']}` ({sweep['store']['rows']} rows); a setting with rounds=r > 1 curated "
           "rounds 2..r again with its own students.", "",
           f"Accuracy is **{metric}** accuracy with its 95% interval (ssb/scoring.py); *vs base* is the change "
           "from the base model in points. Final loss and steps are the last round's training; seconds are the "
           "setting's trainings and its own rounds' curation (not the shared store's).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "## Which setting", ""] + [f"- {v}" for v in verdicts(sweep)]
    if sweep["files"].get("plot"):
        out += ["", f"![accuracy per setting]({Path(sweep['files']['plot']).name})"]
    return "\n".join(out) + "\n"


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> Path:
    """One panel per benchmark: each setting's accuracy with its 95% interval, base on top."""
    names = [r["setting"] for r in sweep["rows"]]
    n_b = max(len(sweep["benchmarks"]), 1)
    fig, axes = pyplot().subplots(1, n_b, sharey=True, squeeze=False,
                                  figsize=(3.2 * n_b + 0.07 * max(len(n) for n in names) + 1.5,
                                           0.35 * len(names) + 1.4))
    for ax, b in zip(axes[0], sweep["benchmarks"]):
        for y, r in enumerate(sweep["rows"]):
            e = r["benchmarks"].get(b)
            if e is None:
                continue
            a, (lo, hi) = e["accuracy"], e["ci95"]
            ax.errorbar([a], [y], xerr=[[a - lo], [hi - a]], fmt="o", capsize=3,
                        color="grey" if r["setting"] == BASE else "C0")
            if r["setting"] == BASE:
                ax.axvline(a, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_title(b)
        ax.set_xlabel("accuracy (" + "/".join(sweep["metric"] or ["–"]) + "), 95% CI")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    return save_figure(fig, path)


def write_sweep(plan: SweepPlan, sweep: dict[str, Any]) -> dict[str, Any]:
    layout = plan.layout
    if any(r["benchmarks"] for r in sweep["rows"]):
        sweep["files"]["plot"] = str(plot_sweep(sweep, layout.sweep_plot))
    sweep["files"].update(table=str(layout.sweep_md), json=str(layout.sweep_json))
    layout.sweep_json.write_text(json.dumps(sweep, indent=2))
    layout.sweep_md.write_text(render_markdown(sweep))
    return sweep
