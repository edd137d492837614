"""The stages `ssb run` and `ssb sweep` are built from, each keyed by what its result depends on.

A stage's key is one of RunConfig's (curation_key, train_key, eval_key: ssb/config.py). A rerun
reuses a result whose recorded key is the one this config gives, redoes one whose key changed,
and says which, with why, in one line per stage. A result made with other settings is never
reused: with `on_change="retrain"` (the default) its stage starts over, with "refuse" the
command stops with a line naming the changed settings.

- curate_round: a round's store resumes (problems done before stay done); a store curated with
  other settings (its manifest's config hash) is curated anew. Round 1 keeping no examples is an
  error; a later round keeping none ends the rounds there (the earlier students still count).
- train_or_reuse: the key is written to train/key.json before the training starts, so a stopped
  training resumes only under its own settings; a training from before keys were kept is judged
  by its train/config.yaml.
- evaluate_or_reuse: each label's key per benchmark is kept in eval/keys.json beside the results
  (a zero-shot pass's in its own diagnostics/eval/keys.json).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ssb.config import RunConfig, load_config
from ssb.digests import digest_dir, key_digest
from ssb.layout import RunLayout

ON_CHANGE = ("retrain", "refuse")
MOST_CHANGES = 3  # changed settings named in a line; the rest are counted


def say(text: str) -> None:
    print(text, flush=True)


def round_config(cfg: RunConfig, r: int) -> RunConfig:
    """Round r's config: round 1 is the run itself; round r ≥ 2 works in <run_dir>/round-<r>/ and
    trains on its own store there (curated with round r-1's student)."""
    if r == 1:
        return cfg
    return cfg.model_copy(update={"run_dir": cfg.layout.round(r).root,
                                  "train": cfg.train.model_copy(update={"store": None})})


# -- keys -------------------------------------------------------------------------------------

def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def key_changes(old: dict[str, Any], new: dict[str, Any], unseen: str = "the settings recorded with it") -> str:
    """`train.lr: 0.0005 → 0.0001`: what differs between the key a result was made with and this
    run's; `unseen` when the two differ only where the record cannot show it."""
    a, b = _flat(old), _flat(new)
    diffs = [f"{k}: {_show(a.get(k))} → {_show(b.get(k))}" for k in sorted(a.keys() | b.keys())
             if a.get(k) != b.get(k)]
    more = f" and {len(diffs) - MOST_CHANGES} more" if len(diffs) > MOST_CHANGES else ""
    return "; ".join(diffs[:MOST_CHANGES]) + more or unseen


def made_otherwise(stage: str, what: Any, changes: str, on_change: str) -> None:
    """A result made with other settings: says that its stage starts over, or refuses in one line."""
    if on_change not in ON_CHANGE:
        raise ValueError(f"on_change {on_change!r}: expected one of {', '.join(ON_CHANGE)}")
    if on_change == "refuse":
        raise ValueError(f"{stage}: {what} came from other settings ({changes}); --on-change retrain redoes it, "
                         "or run in another --run-dir")
    say(f"{stage}: redoes it; {what} came from other settings ({changes})")


def store_digest(uri: str) -> str | None:
    """A logit store's content, from its manifest: its curation key and every shard's bytes."""
    from ssb.store import LogitStore, StoreError

    try:
        manifest = LogitStore.open(uri, allow_empty=True).manifest
    except StoreError:
        return None  # nothing curated there: the training stage itself says so
    return key_digest({"config_hash": manifest["config_hash"],
                       "shards": [[e["name"], e["sha256"]] for e in manifest["shards"] if e["name"]]})


def _store_hash(uri: str) -> str | None:
    from ssb.store import LogitStore, StoreError

    try:
        return LogitStore.open(uri, allow_empty=True).manifest["config_hash"]
    except StoreError:
        return None


# -- curation -----------------------------------------------------------------------------------

def curate_round(cfg: RunConfig, r: int, adapter: str | None, *, title: str = "", progress: bool = True,
                 on_change: str = "retrain") -> bool:
    """Round r's store (r ≥ 2: curated with `adapter`, round r-1's student), resumed or made;
    False when a round r ≥ 2 kept no examples (the rounds end there)."""
    from pipelines.curate import run_curation, with_adapter

    layout, stage = cfg.layout, f"curate{title}"
    wanted = with_adapter(cfg, adapter)
    had = _store_hash(layout.curated)
    if had is None:
        say(f"{stage}: curates into {layout.curated}")
    elif had != wanted.curation_hash():
        was = _recorded(layout.config, lambda c: c.curation_key()) or {}
        unseen = "the curating adapter's content" if adapter else "the settings recorded in its manifest"
        made_otherwise(stage, layout.curated, key_changes(was, wanted.curation_key(), unseen), on_change)
        shutil.rmtree(layout.curated)
        layout.curation_summary.unlink(missing_ok=True)
    else:
        say(f"{stage}: resumes {layout.curated}, curated with these settings (problems done there stay done)")
    summary = run_curation(cfg, progress=progress, adapter=adapter)
    say(summary.table())
    if summary.store.get("rows", 0) > 0:
        return True
    if r == 1:
        raise RuntimeError(f"curation{title} kept no examples: nothing to train on (see {layout.curation_summary}; "
                           "try more rollouts, more problems or easier ones)")
    say(f"{stage}: kept no examples: the rounds stop after round {r - 1} (see {layout.curation_summary})")
    return False


# -- training -----------------------------------------------------------------------------------

def _trained_key(layout: RunLayout, store: str | None) -> dict[str, Any] | None:
    """The key of the training in `layout` (None: nothing trained there)."""
    path = layout.train_key
    if path.exists():
        return json.loads(path.read_text())
    # Trained before keys were kept: its config stands for its key, with the store as it is now.
    legacy = _recorded(layout.train_config, lambda c: c.train_key(store))
    if legacy is not None:
        return legacy
    if layout.adapter_config.exists() or layout.train_experiment.exists():
        return {"settings": "unrecorded (no readable train/config.yaml)"}  # never taken for this run's
    return None


def _recorded(config: Path, key: Any) -> dict[str, Any] | None:
    """`key` of the config a stage wrote beside its result; None when there is none, or it no
    longer reads (a setting since renamed): a result it cannot vouch for is not reused."""
    if not config.exists():
        return None
    try:
        return key(load_config(config))
    except ValueError:  # pydantic's ValidationError included
        return None


def _train_line(layout: RunLayout) -> str:
    from ssb.report import training_stats

    t = training_stats(layout)
    loss = "–" if t["final_loss"] is None else f"{t['final_loss']:.4f}"
    return f"{t['steps']} steps, final loss {loss}, {t['wall_seconds'] or 0:.1f} s → {layout.adapter}"


def train_or_reuse(cfg: RunConfig, *, title: str = "", on_change: str = "retrain") -> str:
    """The adapter trained with cfg's settings in cfg's run directory: a finished one with the
    same key is reused, a stopped one resumes, one trained with other settings is trained again
    (or refused); see the module doc."""
    layout, stage = cfg.layout, f"train{title}"
    key = cfg.train_key(store_digest(cfg.train.store or cfg.store_dir))
    had = _trained_key(layout, key["store"])
    finished = layout.train_summary.exists() and layout.adapter_config.exists()
    if had is not None and had != key:
        made_otherwise(stage, layout.adapter if finished else layout.train, key_changes(had, key), on_change)
        shutil.rmtree(layout.train, ignore_errors=True)
        shutil.rmtree(layout.adapter, ignore_errors=True)
    elif had is not None and finished:
        say(f"{stage}: reuses the adapter trained with these settings ({_train_line(layout)})")
        return str(layout.adapter)
    elif had is not None and layout.train_experiment.exists():
        say(f"{stage}: resumes the stopped training, started with these settings")
    else:
        say(f"{stage}: trains (nothing trained in {layout.train} yet)")
    layout.train.mkdir(parents=True, exist_ok=True)
    (layout.train_key).write_text(json.dumps(key, indent=2))
    from pipelines.distill import run_distillation  # torch and Ray Train: only when there is training to do

    run_distillation(cfg, resume=layout.train_experiment.exists())
    say(f"{stage}: trained ({_train_line(layout)})")
    return str(layout.adapter)


def bootstrap(cfg: RunConfig, rounds: int, *, title: str = "", curated: bool = False, progress: bool = True,
              on_change: str = "retrain", timings: dict[str, float] | None = None) -> dict[int, str]:
    """Rounds 1..`rounds` of one training setting: round r ≥ 2 curates with round r-1's student,
    then trains a fresh LoRA on the base model; round → its adapter, up to the last round that
    kept examples. `curated`: round 1's store is there already (a sweep's shared store)."""
    adapters: dict[int, str] = {}
    for r in range(1, rounds + 1):
        rcfg = round_config(cfg, r)
        tag = title + ("" if rounds == 1 else f" (round {r})")
        t0 = time.perf_counter()
        if r > 1 or not curated:
            say(f"== curate{tag}" + (f" with round {r - 1}'s student" if r > 1 else ""))
            if not curate_round(rcfg, r, adapters.get(r - 1), title=tag, progress=progress, on_change=on_change):
                break
        t1 = time.perf_counter()
        say(f"== train{tag}")
        adapters[r] = train_or_reuse(rcfg, title=tag, on_change=on_change)
        if timings is not None:
            suffix = "" if rounds == 1 else f" round {r}"
            timings.update({f"curate{suffix}": t1 - t0, f"train{suffix}": time.perf_counter() - t1})
    return adapters


# -- evaluation ---------------------------------------------------------------------------------

def benchmark_identity(spec: str, cfg: RunConfig) -> dict[str, Any]:
    """A benchmark's problems, without reading them: its resolved source (eval_key holds the
    limit; where a copy lives does not count) and its file's sha256."""
    from pipelines.evaluate import resolve_benchmark
    from ssb.data import source_file
    from ssb.datasets import file_sha256

    src = resolve_benchmark(spec, cfg)
    file = source_file(src)
    return {"spec": spec, "source": src.model_dump(mode="json", exclude={"limit": True, "data_root": True,
                                                                          "synthetic": {"n"}}),
            "sha256": file_sha256(file) if file is not None and Path(file).is_file() else None}


def read_keys(layout: RunLayout) -> dict[str, dict[str, Any]]:
    """label → benchmark → the eval key its results were measured under."""
    path = layout.eval_keys
    return json.loads(path.read_text()) if path.exists() else {}


def write_keys(layout: RunLayout, keys: dict[str, dict[str, Any]]) -> None:
    path = layout.eval_keys
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys, indent=2))


def extra_key(cfg: RunConfig, x: Any) -> dict[str, Any]:
    """The key of an ExtraSet's greedy pass (pipelines/evaluate.py): its model and its problems."""
    problems = key_digest({"ids": sorted(p.id for p in x.problems)})
    return cfg.eval_key(digest_dir(x.adapter) if x.adapter else None, {"problems": problems}, samples=False)


def _stale(stage: str, had: dict[str, Any], want: dict[str, Any], results: dict[str, Any], on_change: str) -> bool:
    """Whether a label's results must be measured (again); says why, or refuses."""
    missing = [b for b in want if b not in results]
    unkeyed = [b for b in want if b in results and b not in had]
    changed = {b for b in want if b in results and b in had and had[b] != want[b]}
    if changed:
        b = sorted(changed)[0]
        made_otherwise(stage, f"its results on {b}", key_changes(had[b], want[b]), on_change)
    elif missing or unkeyed:
        why = f"no results on {', '.join(missing)} yet" if missing else \
            f"its results on {', '.join(unkeyed)} have no key to check them by"
        say(f"{stage}: evaluates ({why})")
    else:
        say(f"{stage}: reuses its results on {', '.join(want)}, measured with these settings")
    return bool(changed or missing or unkeyed)


def evaluate_or_reuse(cfg: RunConfig, labels: dict[str, str | None], *, progress: bool = True,
                      on_change: str = "retrain", extras: list[Any] = (), merged_elsewhere: list[Path] = ()
                      ) -> Any:
    """Evaluates the labels (None: the base model, else an adapter) whose results on cfg's
    benchmarks are missing or were measured under another key, and `extras` (ExtraSets the
    caller found stale), in one job; their keys are recorded after it. The EvalSummary, or None
    when everything was reused."""
    from pipelines.evaluate import benchmark_key, load_results, run_evaluation

    layout = cfg.layout
    book, results = read_keys(layout), load_results(layout.root)
    benchmarks = {benchmark_key(b): benchmark_identity(b, cfg) for b in cfg.eval.benchmarks}
    todo: dict[str, str | None] = {}
    stamps: dict[str, dict[str, Any]] = {}
    for label, adapter in labels.items():
        digest = digest_dir(adapter) if adapter else None
        want = {b: cfg.eval_key(digest, ident) for b, ident in benchmarks.items()}
        if _stale(f"evaluate {label}", book.get(label, {}), want, results.get(label, {}), on_change):
            todo[label], stamps[label] = adapter, want
    if not todo and not extras:
        return None
    say("== evaluate " + ", ".join(todo) + (" (and the zero-shot diagnostics)" if extras else ""))
    summary = run_evaluation(cfg, todo, progress=progress, extras=list(extras), merged_elsewhere=list(merged_elsewhere))
    for label, want in stamps.items():
        book.setdefault(label, {}).update(want)
    write_keys(layout, book)
    for x in extras:
        kept = read_keys(x.layout)
        kept.setdefault(x.label, {})[x.benchmark] = extra_key(cfg, x)
        write_keys(x.layout, kept)
    return summary
