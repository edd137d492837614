"""The run report: base vs SSB accuracy per benchmark with 95% intervals, the curation
funnel, the diagnostics that predict the gain, tokens, bytes, times, and plots, written to
<run_dir>/report.{md,json} and *.png.

Reads only files a run leaves behind (no Ray, no engine), so it can be rebuilt any time
with `ssb report --run-dir DIR` (the names are ssb/layout.py's; a remote run directory is refused):

- eval/results.json             label → benchmark → ssb.scoring.BenchmarkResult as a dict
                                (labels: "base", "ssb", and "round-<r>" for earlier rounds), with
                                the data each benchmark read (`data_*`: file, sha256, problem
                                count and digest), which the report repeats
- curation_summary.json         round 1's curation (round-<r>/curation_summary.json later rounds)
- train/metrics.jsonl, train/summary.json   (round-<r>/train/... for later rounds)
- timings.json                  stage → seconds, written by `ssb run`
- curated/manifest.json, diagnostics/eval/   each round's per-problem curation outcomes and its
                                zero-shot pass (ssb/diagnostics.py; round-<r>/... later rounds)

`accuracy` is greedy accuracy (one temperature-0 answer per problem) when greedy samples
were drawn, else pass@1 over the n samples; each entry's `metric` says which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssb.cost_report import build_cost, render_cost
from ssb.diagnostics import build_diagnostics
from ssb.layout import ROUND_PREFIX, RunLayout, read_jsonl, round_number

# The curation skip reasons that mean a problem never reached the teacher.
NOT_MIXED = ("no_correct_rollout", "no_incorrect_rollout", "prompt_too_long")
STAGE = "the report"
# What a benchmark read (ssb.scoring.BenchmarkResult; pipelines/evaluate.py's load_benchmark).
DATA_KEYS = ("data_file", "data_sha256", "data_problems", "data_problems_sha256")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None



def funnel(summary: dict[str, Any]) -> dict[str, Any]:
    """problems → mixed (had right and wrong rollouts) → teacher accepted, from a CurationSummary dict."""
    skipped = dict(summary.get("skipped") or {})
    processed = summary.get("processed", 0) + summary.get("already_done", 0)
    mixed = summary.get("processed", 0) - sum(skipped.get(r, 0) for r in NOT_MIXED)
    store = summary.get("store") or {}
    return {
        "problems": summary.get("problems", processed),
        "processed": summary.get("processed", 0),
        "already_done": summary.get("already_done", 0),
        "mixed": mixed,
        "accepted": summary.get("kept", 0),
        "skipped": skipped,
        "rollout_tokens": summary.get("rollout_tokens", 0),
        "teacher_tokens": summary.get("teacher_tokens", 0),
        "store_rows": store.get("rows", 0),
        "store_bytes": store.get("bytes", 0),
        "bytes_per_token": store.get("bytes_per_token"),
        "wall_seconds": summary.get("wall_seconds", 0.0),
    }


def trained_with(layout: RunLayout) -> dict[str, Any] | None:
    """The settings a round's adapter was trained with (its train/config.yaml), the ones that
    change what is learned: after a retrain, the new ones."""
    if not layout.train_config.exists():
        return None
    from ssb.config import HOW_TRAINED, load_config

    return load_config(layout.train_config).train.model_dump(mode="json", exclude=set(HOW_TRAINED))


def training_stats(layout: RunLayout) -> dict[str, Any]:
    """One finished (or stopped) training's steps, losses, seconds and settings, from its files."""
    metrics = [m for m in read_jsonl(layout.train_metrics) if "loss" in m and "step" in m]
    summary = read_json(layout.train_summary) or {}
    return {"steps": summary.get("steps") or (metrics[-1]["step"] if metrics else 0), "rows": summary.get("rows"),
            "first_loss": metrics[0]["loss"] if metrics else None,
            "final_loss": metrics[-1]["loss"] if metrics else (summary.get("final_metrics") or {}).get("loss"),
            "wall_seconds": summary.get("wall_seconds"), "loss_curve": [[m["step"], m["loss"]] for m in metrics],
            "settings": trained_with(layout)}


def _entry(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "ci95", "n", "metric", "greedy", "greedy_ci95", "pass1", "pass1_ci95", "maj", "maj_ci95",
            "samples_per_problem", "answered_share", "tokens", "seconds", *DATA_KEYS)
    return {k: result.get(k) for k in keys if k in result}


def _round_of(label: str, last_round: int) -> int | None:
    if label == "base":
        return 0
    if label == "ssb":
        return last_round
    return round_number(label)


def build_report(run_dir: str | Path) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    root = layout.local(STAGE)
    results: dict[str, dict[str, Any]] = read_json(layout.eval_results) or {}
    rounds = layout.rounds()
    # "ssb" is the last round that trained a student (a later round may have kept nothing).
    trained = [r for r, d in rounds if d.adapter_config.exists()]
    last_round = trained[-1] if trained else rounds[-1][0]

    benchmarks: dict[str, dict[str, Any]] = {}
    for label in ("base", "ssb"):
        for name, result in (results.get(label) or {}).items():
            benchmarks.setdefault(name, {})[label] = _entry(result)
    for name, entry in benchmarks.items():
        read = {label: {k: e[k] for k in DATA_KEYS if e.get(k) is not None} for label, e in entry.items()}
        first = next((r for r in read.values() if r), None)
        if first is not None:
            entry["data"] = first
        if "base" in entry and "ssb" in entry and read["base"] and read["ssb"] and (
                read["base"].get("data_problems_sha256") != read["ssb"].get("data_problems_sha256")):
            entry["data_differs"] = True  # e.g. a base result kept from an evaluation of another copy
        if "base" in entry and "ssb" in entry:
            base, ssb = entry["base"], entry["ssb"]
            entry["delta"] = ssb["accuracy"] - base["accuracy"]
            if ssb["ci95"][0] > base["ci95"][1]:
                entry["verdict"] = "higher (intervals do not overlap)"
            elif ssb["accuracy"] > base["accuracy"]:
                entry["verdict"] = "higher, within the intervals' overlap"
            elif ssb["accuracy"] == base["accuracy"]:
                entry["verdict"] = "no change"
            else:
                entry["verdict"] = "lower"
            if entry.get("data_differs"):
                entry["verdict"] = "not comparable: base and SSB read different problems"

    per_round: list[dict[str, Any]] = []
    for label, per in results.items():
        r = _round_of(label, last_round)
        if r is None or (label.startswith(ROUND_PREFIX) and r == last_round and "ssb" in results):
            continue
        per_round.append({"round": r, "label": label,
                          "benchmarks": {b: {"accuracy": d["accuracy"], "ci95": d["ci95"], "n": d["n"],
                                             "answered_share": d.get("answered_share")}
                                         for b, d in per.items()}})
    per_round.sort(key=lambda x: x["round"])

    curation, training = [], []
    for r, d in rounds:
        cur = read_json(d.curation_summary)
        if cur is not None:
            curation.append({"round": r, **funnel(cur)})
        t = training_stats(d)
        if t["loss_curve"] or d.train_summary.exists():
            training.append({"round": r, **t})
    eval_tokens = sum(d.get("tokens", 0) for per in results.values() for d in per.values())
    return {
        "run_dir": str(root),
        "accuracy_metric": sorted({e[l]["metric"] for e in benchmarks.values() for l in ("base", "ssb") if l in e}),
        "benchmarks": benchmarks,
        "rounds": per_round,
        "curation": curation,
        "training": training,
        "diagnostics": build_diagnostics(root, results),
        "tokens": {"rollout": sum(c["rollout_tokens"] for c in curation),
                   "teacher": sum(c["teacher_tokens"] for c in curation),
                   "eval": eval_tokens},
        "bytes": {"store": sum(c["store_bytes"] for c in curation)},
        "times": read_json(layout.timings) or {},
        "cost": build_cost(layout, results),
        "plots": [],
    }


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def interval(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def accuracy_cell(entry: dict[str, Any]) -> str:
    """`40.0% [16.8, 68.7]`: a result's accuracy with its 95% interval."""
    return f"{pct(entry['accuracy'])} {interval(entry['ci95'])}"


def loss_cell(loss: float | None) -> str:
    return "–" if loss is None else f"{loss:.4f}"


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} pts"


def _count(share: float | None, num: int, den: int) -> str:
    return "–" if share is None else f"{pct(share)} ({num} of {den})"


def render_diagnostics(diagnostics: dict[str, Any]) -> list[str]:
    """The report.md section: one table per curation round, then the answered shares."""
    rounds, answered = diagnostics.get("rounds") or [], diagnostics.get("answered_share") or {}
    if not rounds and not answered:
        return []
    out = ["", "## Diagnostics", "",
           "The student is trained on the teacher's answers to the mixed problems (both right and wrong "
           "rollouts: the ones the teacher answers), so what it gains depends on how much better the teacher "
           "(the same model, shown a right and a wrong attempt) answers them than the model does alone: the gap "
           "below; published work finds the final gain tracks it. The zero-shot pass is over the mixed problems "
           "rather than the kept ones because kept problems are those the teacher got right (100% teacher "
           "accuracy by construction). The model "
           "is the one that curated the round (the base model in round 1, the previous round's student after), "
           "asked as the evaluation asks (student prompt, bare question, greedy); the rollout accuracy is under "
           "the tutor's few-shot prompt, another quantity (ssb/diagnostics.py)."]
    for d in rounds:
        z = d["zero_shot"]
        if not d["teacher_accuracy_is_lower_bound"]:
            bound = "curate.teacher.n = 1"
        elif d["teacher_samples"]:
            bound = f"a lower bound: of curate.teacher.n = {d['teacher_samples']} samples a correct one is seen " \
                    "only when accepted"
        else:
            bound = "a lower bound unless curate.teacher.n = 1 (no config.yaml to tell)"
        out += ["", f"### Round {d['round']}: curated by {d['model']}", "",
                "| diagnostic | value | over |", "|---|---|---|",
                f"| share mixed | {_count(d['mixed_share'], d['mixed'], d['problems'])} | problems curated |",
                f"| teacher acceptance rate | {_count(d['acceptance_rate'], d['accepted'], d['mixed'])} | mixed "
                "problems (answer finished, verified, no mention of the hints) |",
                f"| teacher accuracy with hints | {_count(d['teacher_accuracy'], d['teacher_correct'], d['mixed'])} "
                f"| mixed problems, before the hint check ({bound}) |",
                f"| rollout accuracy (few-shot tutor prompt) | {pct(d['rollout_accuracy_fewshot'])} | the mixed "
                "problems' rollouts (curation_summary.json; – when the curation resumed) |"]
        if z is None:
            out.append("| student zero-shot accuracy | – | no zero-shot pass in this run directory (`ssb run` "
                       "makes it) |")
            continue
        over = (f"the {z['n']} mixed problems" if z["all_mixed"]
                else f"{z['n']} of the {d['mixed']} mixed problems (a fixed-seed draw)")
        out += [f"| student zero-shot accuracy ({d['model']}, {z['metric']}) | {pct(z['accuracy'])} "
                f"{interval(z['ci95'])} | {over} |",
                f"| teacher accuracy with hints, same problems | "
                f"{_count(z['teacher_accuracy'], z['teacher_correct'], z['n'])} | the same problems |",
                f"| **gap** (teacher with hints − student zero-shot) | **{_pts(z['gap'])}** | "
                "the same problems |",
                f"| zero-shot answered share | {pct(z['answered_share'])} | greedy answers with a final answer |"]
    if answered:
        names = sorted({b for per in answered.values() for b in per})
        out += ["", "### Answered share", "",
                "The share of drawn answers (samples and greedy) with an extractable final answer, per model and "
                "benchmark: a drop in accuracy with a drop here is a format failure, not a reasoning one.", "",
                "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, per in answered.items():
            out.append(f"| {label} | " + " | ".join(pct(per.get(b)) for b in names) + " |")
    return out


def render_data(benchmarks: dict[str, Any]) -> list[str]:
    """The report.md section naming the problems behind each benchmark: the file (or hub
    dataset) read, its sha256, its problem count and digest, and how many were evaluated."""
    rows = [(name, e) for name, e in benchmarks.items() if e.get("data")]
    if not rows:
        return []
    out = ["", "## Benchmark data", "",
           "What each benchmark read. A named benchmark (svamp, gsm8k-test, math500, aime24) always holds the "
           "repo's problems (data/README.md; a copy with other problems is refused), and the digests tell any two "
           "runs' problems apart (the problems digest: questions and gold answers, normalised, in order; "
           "ssb/datasets.py).", "",
           "| benchmark | read from | problems | evaluated | file sha256 | problems digest |",
           "|---|---|---|---|---|---|"]
    for name, e in rows:
        d = e["data"]
        n = (e.get("ssb") or e.get("base") or {}).get("n", "–")
        out.append(f"| {name} | `{d.get('data_file', '–')}` | {d.get('data_problems', '–')} | {n} | "
                   f"{_code(d.get('data_sha256'))} | {_code(d.get('data_problems_sha256'))} |")
    differ = [name for name, e in rows if e.get("data_differs")]
    if differ:
        out += ["", f"**Base and SSB were evaluated on different problems for: {', '.join(differ)}** (their "
                "problems digests differ in eval/results.json): their accuracies are not comparable."]
    return out


def _code(digest: str | None) -> str:
    return "–" if not digest else f"`{digest[:16]}…`"  # report.json has all 64


def render_table(report: dict[str, Any]) -> str:
    """Plain-text table of base vs SSB per benchmark, printed at the end of `ssb run`."""
    header = f"{'benchmark':<20} {'metric':<7} {'base':>7} {'95% CI':>14} {'ssb':>7} {'95% CI':>14} {'delta':>7}  n"
    lines = [header, "-" * len(header)]
    for name, e in report["benchmarks"].items():
        b, s = e.get("base"), e.get("ssb")
        metric = (s or b or {}).get("metric", "")
        delta = f"{100 * e['delta']:+.1f}" if "delta" in e else "–"
        n = (s or b or {}).get("n", "")
        lines.append(f"{name:<20} {metric:<7} {pct(b and b['accuracy']):>7} {interval(b and b['ci95']):>14} "
                     f"{pct(s and s['accuracy']):>7} {interval(s and s['ci95']):>14} {delta:>7}  {n}")
    for d in (report.get("diagnostics") or {}).get("rounds", []):
        line = (f"round {d['round']} ({d['model']}): mixed {pct(d['mixed_share'])}, teacher accepted "
                f"{pct(d['acceptance_rate'])}, teacher with hints {pct(d['teacher_accuracy'])}")
        z = d["zero_shot"]
        if z is not None:
            line += (f"; on {z['n']} mixed problems teacher {pct(z['teacher_accuracy'])} vs zero-shot "
                     f"{pct(z['accuracy'])}: gap {_pts(z['gap'])}")
        lines.append(line)
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# SSB run report: {report['run_dir']}", ""]
    metrics = ", ".join(report["accuracy_metric"]) or "none"
    out += ["## Accuracy, base vs SSB", "",
            f"`accuracy` is **{metrics}** accuracy (greedy: one temperature-0 answer per problem; pass@1: the mean "
            "over the n samples). 95% intervals: Wilson over problems for greedy and maj@k; for pass@1 a normal "
            "interval over per-problem means (ssb/scoring.py).", "",
            "| benchmark | n | base | base 95% CI | SSB | SSB 95% CI | delta | base pass@1 | SSB pass@1 | "
            "base maj@k | SSB maj@k | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in report["benchmarks"].items():
        b, s = e.get("base") or {}, e.get("ssb") or {}
        delta = f"{100 * e['delta']:+.1f} pts" if "delta" in e else "–"
        out.append(f"| {name} | {(s or b).get('n', '')} | {pct(b.get('accuracy'))} | {interval(b.get('ci95'))} | "
                   f"{pct(s.get('accuracy'))} | {interval(s.get('ci95'))} | {delta} | {pct(b.get('pass1'))} | "
                   f"{pct(s.get('pass1'))} | {pct(b.get('maj'))} | {pct(s.get('maj'))} | {e.get('verdict', '–')} |")
    lower = [n for n, e in report["benchmarks"].items() if e.get("delta") is not None and e["delta"] <= 0]
    if lower:
        out += ["", f"**The SSB student is not better than the base model on: {', '.join(lower)}.**"]
    out += render_data(report["benchmarks"])
    if len(report["rounds"]) > 2:
        out += ["", "## Accuracy per round", "", "| round | model | " + " | ".join(report["benchmarks"]) + " |",
                "|---|---|" + "---|" * len(report["benchmarks"])]
        for r in report["rounds"]:
            cells = [accuracy_cell(r["benchmarks"][b]) if b in r["benchmarks"] else "–" for b in report["benchmarks"]]
            out.append(f"| {r['round']} | {r['label']} | " + " | ".join(cells) + " |")
    if report["curation"]:
        out += ["", "## Curation funnel", "", "| round | problems | mixed | teacher accepted | skipped | "
                "rollout tokens | teacher tokens | store rows | store bytes | bytes/token | seconds |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in report["curation"]:
            skipped = ", ".join(f"{k}: {v}" for k, v in sorted(c["skipped"].items())) or "–"
            bpt = f"{c['bytes_per_token']:.1f}" if c.get("bytes_per_token") else "–"
            out.append(f"| {c['round']} | {c['problems']} | {c['mixed']} | {c['accepted']} | {skipped} | "
                       f"{c['rollout_tokens']} | {c['teacher_tokens']} | {c['store_rows']} | {c['store_bytes']} | "
                       f"{bpt} | {c['wall_seconds']:.1f} |")
    out += render_diagnostics(report.get("diagnostics") or {})
    if report["training"]:
        out += ["", "## Training", "", "| round | rows | steps | first loss | final loss | seconds |",
                "|---|---|---|---|---|---|"]
        for t in report["training"]:
            secs = "–" if t["wall_seconds"] is None else f"{t['wall_seconds']:.1f}"
            out.append(f"| {t['round']} | {t['rows'] if t['rows'] is not None else '–'} | {t['steps']} | "
                       f"{loss_cell(t['first_loss'])} | {loss_cell(t['final_loss'])} | {secs} |")
        out += ["", "Trained with (the settings that change what is learned; report.json has them all):", ""]
        out += [f"- round {t['round']}: {settings_line(t.get('settings'))}" for t in report["training"]]
    tok = report["tokens"]
    out += ["", "## Tokens, bytes, times", "",
            f"- tokens: {tok['rollout']} rollout, {tok['teacher']} teacher, {tok['eval']} evaluation",
            f"- logit store: {report['bytes']['store']} bytes"]
    for stage, secs in report["times"].items():
        out.append(f"- {stage}: {secs:.1f} s")
    out += render_cost(report.get("cost"))
    if report["plots"]:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in report["plots"]]
    return "\n".join(out) + "\n"


# The training settings report.md names per round (report.json and train/config.yaml hold them all).
SHOWN_SETTINGS = ("lr", "epochs", "max_steps", "batch_size", "grad_accum", "warmup_steps", "lora.r", "lora.alpha",
                  "kl_weight", "ce_weight", "temperature", "seed")


def settings_line(settings: dict[str, Any] | None) -> str:
    if not settings:
        return "– (no train/config.yaml)"
    flat = {**settings, **{f"lora.{k}": v for k, v in (settings.get("lora") or {}).items()}}
    return ", ".join(f"train.{k}={flat[k]}" for k in SHOWN_SETTINGS if k in flat)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def plot_accuracy(report: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars per benchmark: one bar per round (base = round 0, …, SSB) with 95% intervals."""
    plt = pyplot()
    names = list(report["benchmarks"])
    series = report["rounds"] or [{"round": 0, "label": "base", "benchmarks": {}}]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(names) + 2), 3.6))
    for i, s in enumerate(series):
        acc = [s["benchmarks"].get(b, {}).get("accuracy", 0.0) for b in names]
        # Clipped at 0: matplotlib refuses a negative error, and a report.json written before
        # ssb.scoring.wilson kept its bounds around p can hold a lower bound of 5.6e-17 at 0%.
        cis = [s["benchmarks"].get(b, {}).get("ci95", [a, a]) for a, b in zip(acc, names)]
        lo = [max(0.0, a - ci[0]) for a, ci in zip(acc, cis)]
        hi = [max(0.0, ci[1] - a) for a, ci in zip(acc, cis)]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        label = s["label"] if len(series) <= 2 else f"{s['label']} (round {s['round']})"
        ax.bar(xs, acc, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("accuracy (" + "/".join(report["accuracy_metric"] or ["–"]) + ")")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("accuracy per benchmark, 95% CI")
    return save_figure(fig, path)


def plot_loss(report: dict[str, Any], path: str | Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(5, 3.4))
    for t in report["training"]:
        if t["loss_curve"]:
            steps, losses = zip(*t["loss_curve"])
            ax.plot(steps, losses, marker=".", label=f"round {t['round']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("distillation loss")
    ax.legend()
    return save_figure(fig, path)


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Builds the report from the run's files; writes report.json, report.md and the plots."""
    layout = RunLayout(run_dir)
    layout.local(STAGE)
    report = build_report(run_dir)
    if report["benchmarks"]:
        report["plots"].append(str(plot_accuracy(report, layout.accuracy_plot)))
    if any(t["loss_curve"] for t in report["training"]):
        report["plots"].append(str(plot_loss(report, layout.loss_plot)))
    layout.report_json.write_text(json.dumps(report, indent=2))
    layout.report_md.write_text(render_markdown(report))
    return report
