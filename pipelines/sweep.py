"""Several training settings on one curated store, side by side: `ssb sweep`.

    ssb sweep --config configs/default.yaml --run-dir runs/sweep train.ce_weight=0,0.5,1 train.temperature=1,2
    ssb sweep --config configs/default.yaml --run-dir runs/sweep train.ce_weight=0,1 --rounds 1,2 eval.limit=100

An override whose value has a comma outside brackets and quotes is a sweep axis; every
combination of the axes' values (times each of `--rounds`) is a setting. Other overrides apply
to all. Only training settings (train.*) can be axes: a sweep compares them on one store with
one evaluation, so what the store or the evaluation depends on stays fixed. Every setting's
config is validated before anything runs.

- The store is curated once, as `ssb run` lays out round 1: <run_dir>/curated/ (resumes like
  `ssb curate`; a run directory of an earlier `ssb run` lends its store).
- Each training setting has a directory <run_dir>/sweep/<name>/ with the layout of an
  `ssb run --rounds R` run directory: round 1 trains there on the shared store, round r ≥ 2
  curates in round-<r>/ with round r-1's adapter and trains on that store. The settings
  `x, rounds=1` and `x, rounds=2` share that directory, so round 1 of `x` trains once.
- The base model and each setting's last student are evaluated in one job on eval.benchmarks
  (pipelines/evaluate.py), filed in <run_dir>/eval/results.json under "base" and the settings'
  names; <run_dir>/sweep/evaluated.json records what each label's results measured.
- <run_dir>/sweep.md, sweep.json and sweep.png compare them: accuracy with 95% intervals and
  its change from the base model per benchmark, and the training's final loss, steps, seconds.

Re-running reuses what is done: a finished training (train/summary.json and adapter/) is kept
(one trained with other train.* settings is refused rather than mixed in), a stopped one
resumes, and a label evaluated under the same eval settings with the same adapter is not
evaluated again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.run import round_config
from ssb.config import RunConfig, apply_overrides, digest_dir, load_config
from ssb.layout import RunLayout

# The sweep's tables, plot and records are written with local file operations.
STAGE = "ssb sweep (curate once, train and evaluate each setting, compare)"
BASE = "base"
AXIS_SECTION = "train."
# Train settings that change how a training is run or recorded, not what it learns.
NOT_LEARNED = ("log_every", "checkpoint_every", "max_failures", "merge", "store")
MAX_NAME = 120  # characters of a setting's directory name, before a hash stands in for the rest
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]")
_OPEN, _CLOSE = "[{(", "]})"


@dataclass(frozen=True)
class Axis:
    key: str  # dotted, e.g. train.ce_weight
    values: tuple[str, ...]  # as given, each parsed like an override's value


@dataclass(frozen=True)
class Setting:
    name: str  # the setting's label in results and tables, e.g. "ce_weight=0.5,rounds=2"
    values: tuple[tuple[str, str], ...]  # (axis key, value as given)
    rounds: int
    train_name: str  # its directory under <run_dir>/sweep/, shared by its rounds values
    cfg: RunConfig  # run_dir: that directory; train.store: the shared store


@dataclass
class SweepPlan:
    base: RunConfig
    axes: list[Axis]
    rounds: list[int]
    settings: list[Setting]

    @property
    def layout(self) -> RunLayout:
        return self.base.layout


# -- the command line: axes, rounds, settings ---------------------------------------------------

def split_values(text: str) -> list[str]:
    """`text` cut at its commas outside [], {}, () and quotes: `0,0.5` → 2 values, `[a,b]` → 1."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def split_axes(overrides: list[str]) -> tuple[list[str], list[Axis]]:
    """(overrides that apply to every setting, sweep axes), in the order given."""
    plain: list[str] = []
    axes: list[Axis] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        values = split_values(raw) if sep else [raw]
        if len(values) == 1:
            plain.append(item)
            continue
        key = key.strip()
        if any(v == "" for v in values):
            raise ValueError(f"sweep axis {key}={raw}: an empty value (values are separated by single commas)")
        if len(set(values)) < len(values):
            raise ValueError(f"sweep axis {key}={raw}: a value is given twice")
        axes.append(Axis(key, tuple(values)))
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"sweep axis {key} is given twice: give all its values in one override ({key}=a,b,c)")
        if key in {p.partition("=")[0].strip() for p in plain}:
            raise ValueError(f"{key} is given both as a sweep axis and as a single value")
        _check_axis_key(key)
    return plain, axes


def _check_axis_key(key: str) -> None:
    if key == "rounds":
        raise ValueError("rounds is not a setting: sweep it with --rounds 1,2")
    if key == "train.store":
        raise ValueError("train.store cannot be swept: a sweep trains every setting on its run directory's store")
    if not key.startswith(AXIS_SECTION):
        raise ValueError(f"{key} cannot be a sweep axis: a sweep compares training settings (train.*) on one "
                         "curated store with one evaluation (curation's and evaluation's settings stay fixed; "
                         "use --rounds 1,2 for bootstrapping rounds). A single value with a comma is quoted: "
                         f"{key}='a, b'")


def parse_rounds(text: str) -> list[int]:
    """`--rounds 1,2` → [1, 2]: each a whole number ≥ 1, in increasing order."""
    rounds = []
    for part in text.split(","):
        try:
            r = int(part.strip())
        except ValueError:
            raise ValueError(f"rounds {text!r}: {part.strip()!r} is not a whole number") from None
        if r < 1:
            raise ValueError(f"rounds {text!r}: {r}: need at least 1")
        rounds.append(r)
    if len(set(rounds)) < len(rounds):
        raise ValueError(f"rounds {text!r}: a value is given twice")
    return sorted(rounds)


def setting_name(values: tuple[tuple[str, str], ...], rounds: int | None) -> str:
    """`ce_weight=0.5,temperature=1,rounds=2`, safe as a directory name and as an evaluation label."""
    parts = [f"{key.removeprefix(AXIS_SECTION)}={value}" for key, value in values]
    if rounds is not None:
        parts.append(f"rounds={rounds}")
    name = _UNSAFE.sub("_", ",".join(parts)) or "default"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 17] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` with dotted overrides laid over it, read as every `ssb` command reads them."""
    return RunConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides))


def plan_sweep(base: RunConfig, axes: list[Axis], rounds: list[int] | None = None) -> SweepPlan:
    """Every setting with its validated config, or ValueError (pydantic's for a bad value)
    before anything is written or started."""
    rounds = sorted(rounds or [1])
    layout = base.layout
    layout.local(STAGE)
    if base.train.store:
        raise ValueError(f"train.store={base.train.store}: a sweep trains on its run directory's own store "
                         f"({layout.curated}); to sweep on an earlier run's store, give that run's --run-dir")
    if not axes and len(rounds) == 1:
        raise ValueError("nothing to sweep: give a training setting with several values (train.ce_weight=0,1) "
                         "or several rounds (--rounds 1,2); `ssb run` runs a single setting")
    store = _shared_store(base)
    show_rounds = len(rounds) > 1 or rounds != [1]
    settings: list[Setting] = []
    for combo in itertools.product(*[[(a.key, v) for v in a.values] for a in axes]):
        values = tuple(combo)
        train_name = setting_name(values, None)
        cfg = with_overrides(base, [f"{k}={v}" for k, v in values])
        # Set, not parsed: a path is not read as YAML.
        cfg = cfg.model_copy(update={"run_dir": layout.sweep_setting(train_name).root,
                                     "train": cfg.train.model_copy(update={"store": store})})
        for r in rounds:
            settings.append(Setting(setting_name(values, r if show_rounds else None), values, r, train_name, cfg))
    names = [s.name for s in settings]
    for name in names:
        if names.count(name) > 1 or name == BASE:
            raise ValueError(f"two settings would share the name {name!r}: give values that differ in letters or "
                             "digits")
    return SweepPlan(base, axes, rounds, settings)


def _shared_store(base: RunConfig) -> str:
    # Absolute: the training's resolved config then names the very store it read.
    return str(Path(base.store_dir).resolve())


# -- running it -----------------------------------------------------------------------------

def _say(text: str) -> None:
    print(text, flush=True)


def run_sweep(plan: SweepPlan, *, progress: bool = True) -> dict[str, Any]:
    """Curates once, trains each setting, evaluates base and students; returns the comparison
    (also written to <run_dir>/sweep.{md,json,png})."""
    from pipelines.curate import run_curation

    start = time.perf_counter()
    base, layout = plan.base, plan.layout
    layout.local(STAGE)
    n_train = len({s.train_name for s in plan.settings})
    _say(f"== sweep: {len(plan.settings)} settings ({n_train} trainings"
         f"{', rounds ' + ','.join(map(str, plan.rounds)) if plan.rounds != [1] else ''}) in {layout.root}")
    _say(f"== curate (the shared store: {layout.curated})")
    summary = run_curation(base, progress=progress)
    _say(summary.table())
    if summary.store.get("rows", 0) == 0:
        raise RuntimeError(f"curation kept no examples: nothing to train on (see {layout.curation_summary}; "
                           "try more rollouts, more problems or easier ones)")

    adapters: dict[str, str | None] = {}
    chains: dict[str, list[Setting]] = {}
    for s in plan.settings:
        chains.setdefault(s.train_name, []).append(s)
    for i, (train_name, settings) in enumerate(chains.items(), start=1):
        finals = _train_chain(settings[0].cfg, max(s.rounds for s in settings), f"[{i}/{len(chains)}] {train_name}",
                              progress)
        for s in settings:
            adapters[s.name] = finals.get(s.rounds)

    _evaluate(plan, adapters, progress)
    sweep = build_sweep(plan)
    sweep["seconds"] = time.perf_counter() - start
    return write_sweep(plan, sweep)


def _train_chain(cfg: RunConfig, rounds: int, title: str, progress: bool) -> dict[int, str]:
    """Rounds 1..`rounds` of one training setting; round → its adapter, up to the last round
    that had examples to train on."""
    from pipelines.curate import run_curation

    adapters: dict[int, str] = {}
    own = cfg.model_copy(update={"train": cfg.train.model_copy(update={"store": None})})
    for r in range(1, rounds + 1):
        tag = "" if rounds == 1 else f" round {r}"
        rcfg = cfg if r == 1 else round_config(own, r)
        if r > 1:
            _say(f"== curate {title}{tag} (with round {r - 1}'s student)")
            summary = run_curation(rcfg, progress=progress, adapter=adapters[r - 1])
            _say(summary.table())
            if summary.store.get("rows", 0) == 0:
                _say(f"round {r} kept no examples: {title} stops after round {r - 1} (see "
                     f"{rcfg.layout.curation_summary})")
                break
        _say(f"== train {title}{tag}")
        adapters[r] = train_or_reuse(rcfg)
    return adapters


def train_or_reuse(cfg: RunConfig) -> str:
    """The adapter of a finished training in cfg's run directory, or a fresh (or resumed) one.
    A training done with other settings is refused: its results would be filed under this one's name."""
    layout = cfg.layout
    if layout.train_config.exists():
        done = load_config(layout.train_config)
        changed = _train_changes(done, cfg)
        if changed:
            raise ValueError(f"{layout.train} was trained with other settings ({'; '.join(changed)}): remove "
                             f"{layout.root} to train it again, or sweep in another --run-dir")
    if layout.train_summary.exists() and layout.adapter_config.exists():
        _say(f"already trained: {_train_line(layout)}")
        return str(layout.adapter)
    from pipelines.distill import run_distillation  # torch and Ray Train: only when there is training to do

    run_distillation(cfg, resume=layout.train_experiment.exists())
    _say(f"trained: {_train_line(layout)}")
    return str(layout.adapter)


def _train_changes(done: RunConfig, cfg: RunConfig) -> list[str]:
    before = done.train.model_dump(exclude=set(NOT_LEARNED))
    now = cfg.train.model_dump(exclude=set(NOT_LEARNED))
    changes = [f"train.{k}: {before.get(k)!r} there, {now[k]!r} now" for k in now if before.get(k) != now[k]]
    if done.model.name != cfg.model.name:
        changes.append(f"model.name: {done.model.name!r} there, {cfg.model.name!r} now")
    return changes


def _train_line(layout: RunLayout) -> str:
    t = training_stats(layout)
    loss = "–" if t["final_loss"] is None else f"{t['final_loss']:.4f}"
    return f"{t['steps']} steps, final loss {loss}, {t['seconds'] or 0:.1f} s → {layout.adapter}"


def eval_key(cfg: RunConfig) -> str:
    """What an evaluation's results depend on besides the adapter: results measured under
    another key are measured again."""
    keys = {"eval": cfg.eval.model_dump(mode="json", exclude={"adapter", "label"}),
            "model": cfg.model.model_dump(mode="json", exclude={"adapter"}),
            "prompts": cfg.prompts.model_dump(mode="json"), "verify": cfg.verify.model_dump(mode="json"),
            "seed": cfg.engine.seed}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _evaluate(plan: SweepPlan, adapters: dict[str, str | None], progress: bool) -> None:
    from pipelines.evaluate import benchmark_key, load_results, run_evaluation

    base, layout = plan.base, plan.layout
    record_path = layout.sweep_evaluated
    record: dict[str, Any] = json.loads(record_path.read_text()) if record_path.exists() else {}
    have = load_results(layout.root)
    keys = [benchmark_key(b) for b in base.eval.benchmarks]
    want = {"eval": eval_key(base)}
    todo: dict[str, str | None] = {}
    stamps: dict[str, dict[str, Any]] = {}
    for label, adapter in {BASE: None, **{n: a for n, a in adapters.items() if a is not None}}.items():
        stamps[label] = {**want, "adapter": digest_dir(adapter) if adapter else None}
        if record.get(label) != stamps[label] or not all(k in have.get(label, {}) for k in keys):
            todo[label] = adapter
    skipped = [label for label in stamps if label not in todo]
    if skipped:
        _say(f"already evaluated: {', '.join(skipped)}")
    if not todo:
        return
    _say("== evaluate " + ", ".join(todo))
    run_evaluation(base, todo, progress=progress)
    record.update({label: stamps[label] for label in todo})
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2))


# -- the comparison -------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def training_stats(layout: RunLayout) -> dict[str, Any]:
    """One finished (or stopped) training's steps, final loss and seconds, from its files."""
    summary = _read_json(layout.train_summary) or {}
    metrics = []
    if layout.train_metrics.exists():
        metrics = [m for m in (json.loads(x) for x in layout.train_metrics.read_text().splitlines() if x.strip())
                   if "loss" in m and "step" in m]
    final = metrics[-1]["loss"] if metrics else (summary.get("final_metrics") or {}).get("loss")
    return {"steps": summary.get("steps") or (metrics[-1]["step"] if metrics else 0), "rows": summary.get("rows"),
            "final_loss": final, "seconds": summary.get("wall_seconds")}


def _entry(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result.get(k) for k in ("accuracy", "ci95", "n", "metric")}


def build_sweep(plan: SweepPlan) -> dict[str, Any]:
    """The comparison from the files the sweep left behind: base first, then each setting."""
    from pipelines.evaluate import benchmark_key

    layout = plan.layout
    results: dict[str, Any] = _read_json(layout.eval_results) or {}
    benchmarks = [benchmark_key(b) for b in plan.base.eval.benchmarks]
    base_results = results.get(BASE, {})
    rows: list[dict[str, Any]] = [{"setting": BASE, "overrides": {}, "rounds": 0, "dir": None, "adapter": None,
                                   "status": "evaluated" if base_results else "not evaluated",
                                   "benchmarks": {b: _entry(base_results[b]) for b in benchmarks if b in base_results},
                                   "train": None}]
    for s in plan.settings:
        chain = RunLayout(s.cfg.output_dir)
        last = chain.round(s.rounds)
        trained = last.adapter_config.exists()
        status = "evaluated" if s.name in results else ("trained, not evaluated" if trained else "not trained")
        for r in range(2, s.rounds + 1):
            cur = _read_json(chain.round(r).curation_summary)
            if not trained and cur is not None and (cur.get("store") or {}).get("rows", 0) == 0:
                status = f"round {r} kept no examples"
                break
        seconds = 0.0
        for r in range(1, s.rounds + 1):
            seconds += training_stats(chain.round(r))["seconds"] or 0.0
            if r > 1:
                seconds += (_read_json(chain.round(r).curation_summary) or {}).get("wall_seconds", 0.0)
        stats = training_stats(last) if trained else {"steps": None, "rows": None, "final_loss": None}
        per = results.get(s.name, {}) if trained else {}
        entries: dict[str, Any] = {}
        for b in benchmarks:
            if b in per:
                entries[b] = _entry(per[b])
                if b in base_results:
                    entries[b]["delta"] = per[b]["accuracy"] - base_results[b]["accuracy"]
        rows.append({"setting": s.name, "overrides": dict(s.values), "rounds": s.rounds, "dir": last.root,
                     "adapter": str(last.adapter) if trained else None, "status": status, "benchmarks": entries,
                     "train": {**stats, "seconds": seconds if trained else None}})
    store = _read_json(layout.curation_summary) or {}
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
        b_lo, b_hi = base["benchmarks"][benchmark]["ci95"]
        out["above_base"] = lo > b_hi
    return out


def verdicts(sweep: dict[str, Any]) -> list[str]:
    """One sentence per benchmark: which setting is best, and how sure this evaluation is of it."""
    lines = []
    for b in sweep["benchmarks"]:
        best = sweep["best"].get(b)
        if best is None:
            lines.append(f"{b}: no setting was evaluated")
            continue
        acc = f"{_pct(best['accuracy'])} {_ci(best['ci95'])}"
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
        lines.append(text)
    return lines


def _names(names: list[str], most: int = 4) -> str:
    return ", ".join(names) if len(names) <= most else ", ".join(names[:most]) + f" and {len(names) - most} more"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


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
                cells.append(f"{_pct(e['accuracy'])} {_ci(e['ci95'])}")
            else:  # why a row has no numbers, once, in its first benchmark's column
                cells.append(r["status"] if b == sweep["benchmarks"][0] else "–")
            cells.append(f"{100 * e['delta']:+.1f}" if e and e.get("delta") is not None else "–")
        t = r["train"] or {}
        cells.append("–" if t.get("final_loss") is None else f"{t['final_loss']:.4f}")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["setting"] for r in sweep["rows"]]
    n_b = max(len(sweep["benchmarks"]), 1)
    fig, axes = plt.subplots(1, n_b, sharey=True, squeeze=False,
                             figsize=(3.2 * n_b + 0.07 * max(len(n) for n in names) + 1.5, 0.35 * len(names) + 1.4))
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
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_sweep(plan: SweepPlan, sweep: dict[str, Any]) -> dict[str, Any]:
    layout = plan.layout
    if any(r["benchmarks"] for r in sweep["rows"]):
        sweep["files"]["plot"] = str(plot_sweep(sweep, layout.sweep_plot))
    sweep["files"].update(table=str(layout.sweep_md), json=str(layout.sweep_json))
    layout.sweep_json.write_text(json.dumps(sweep, indent=2))
    layout.sweep_md.write_text(render_markdown(sweep))
    return sweep
