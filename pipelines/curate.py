"""Curation job: problems → rollouts → verification → selection → teacher → logit store.

Ray Data streams problem batches to engine actors; each actor holds one CurationEngine
(pipelines/curation_engine.py: vLLM's AsyncLLM, a verifier, ssb/curator.py's Curator) and
works on `engine.max_concurrent_batches` batches at once, every problem at its own pace. The
driver commits what comes out to the sharded store. One engine per replica serves both the
rollout and the teacher role by default (`engine.colocate`): the teacher is the same model
with another prompt, so a second copy would only halve each device's KV cache. With
`colocate: false` rollouts (with verification and selection) and the teacher (with its
judgement) run as two Ray Data operators, each with its own replicas (e.g. rollouts on many
GPUs, the teacher on fewer).

Why map_batches actors rather than `ray.data.llm` processors: its vLLM stage keeps only the
first completion of a request (we need n rollouts per problem from one prefill), returns
log-probs as per-token dicts that Arrow cannot hold, and would load the model once per role.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa

from pipelines.engine import engine_actor_options
from pipelines.merged import MERGED_STAGE, merged_copy, merges_adapters
from pipelines.state_table import problems_of, to_states, to_table
from ssb.config import RunConfig, dump_config
from ssb.cost import Budget, cost_object, stop_message
from ssb.curator import to_example
from ssb.data import load_problems
from ssb.default_model import resolve_model
from ssb.prompts import tokenizer_fingerprint
from ssb.records import CuratedExample, Problem, ProblemState
from ssb.store import LogitStore
from ssb.store_codec import encoding_of
from ssb.trace import spent_per_problem, trace_of

log = logging.getLogger(__name__)


class CurationWorker:
    """A Ray Data actor: one CurationEngine. `role` "all" curates problems; with
    `engine.colocate: false` "rollout" does steps 1–3a and "teacher" the rest."""

    def __init__(self, cfg_json: str, model_path: str, role: str = "all"):
        from pipelines.curation_engine import CurationEngine

        self.engine = CurationEngine(RunConfig.model_validate_json(cfg_json), model_path)
        self.role = role

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.role == "teacher":
            return to_table(await self.engine.teach(to_states(batch)))
        problems = problems_of(batch)
        states = await (self.engine.roll_out(problems) if self.role == "rollout" else self.engine.curate(problems))
        return to_table(states)

    def __del__(self) -> None:
        # Ray Data drops the UDF when the job ends: the engine stops before the process does.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def build_curation_dataset(cfg: RunConfig, problems: list[dict[str, Any]], model_path: str) -> Any:
    """The Ray Data plan; nothing runs until it is iterated."""
    import ray

    e = cfg.engine
    blocks = max(1, math.ceil(len(problems) / e.batch_size))
    ds = ray.data.from_items(problems, override_num_blocks=blocks)

    def pool(size: int) -> Any:
        # An actor takes several batches at once and is sent twice as many as it runs, so the
        # next one is already there when one finishes.
        c = e.max_concurrent_batches
        return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=c,
                                          max_tasks_in_flight_per_actor=2 * c)

    def stage(ds: Any, role: str, size: int) -> Any:
        return ds.map_batches(CurationWorker, compute=pool(size), batch_size=e.batch_size, batch_format="pyarrow",
                              fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "model_path": model_path,
                                                     "role": role},
                              **engine_actor_options(e))

    if e.colocate:
        return stage(ds, "all", e.replicas)
    return stage(stage(ds, "rollout", e.replicas), "teacher", e.teacher_replicas)


@dataclass
class CurationSummary:
    problems: int = 0
    already_done: int = 0
    processed: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    rollout_tokens: int = 0
    teacher_tokens: int = 0
    engine_seconds: float = 0.0  # summed over engines: seconds each had a request in flight
    rollout_engine_seconds: float = 0.0  # engine_seconds split by stage (ssb/cost.py)
    teacher_engine_seconds: float = 0.0
    verify_seconds: float = 0.0  # problems' time waiting on the verifier (they overlap)
    engine_load_seconds: float = 0.0  # summed over engines: their start-up
    # From the run's start until its first engine was up: what `wall_seconds` spent before
    # any generation could start (Ray, the actors, loading the model).
    startup_seconds: float = 0.0
    wall_seconds: float = 0.0
    store: dict[str, Any] = field(default_factory=dict)
    load_report: str = ""
    # Rollout verdicts under the tutor's few-shot prompt, over every verified problem and over
    # the mixed ones (right and wrong rollouts, sent to the teacher): the diagnostics
    # (ssb/diagnostics.py) set the latter beside the student's zero-shot accuracy on them.
    rollouts: int = 0
    rollouts_correct: int = 0
    mixed: int = 0
    mixed_rollouts: int = 0
    mixed_rollouts_correct: int = 0
    stopped_by: str | None = None  # the budget (curate.budget.*) that stopped the run, if one did
    stop_line: str = ""
    cost: dict[str, Any] = field(default_factory=dict)  # set by close(): ssb.cost.cost_object

    @property
    def kept_share(self) -> float:
        return self.kept / self.processed if self.processed else 0.0

    @property
    def generated_tokens(self) -> int:
        return self.rollout_tokens + self.teacher_tokens

    def table(self) -> str:
        lines = [
            f"problems          {self.problems} ({self.already_done} already in the store)",
            f"processed         {self.processed}",
            f"kept              {self.kept} ({100 * self.kept_share:.1f}%)",
        ]
        lines += [f"  skipped {reason:<24} {n}" for reason, n in sorted(self.skipped.items())]
        tok_s = (self.rollout_tokens + self.teacher_tokens) / self.wall_seconds if self.wall_seconds else 0.0
        lines += [
            f"tokens            {self.rollout_tokens} rollout + {self.teacher_tokens} teacher ({tok_s:.0f} tok/s)",
            f"stored            {self.store.get('rows', 0)} rows, {self.store.get('bytes', 0)} bytes, "
            f"{self.store.get('bytes_per_token') or 0.0:.1f} bytes/token",
            f"wall time         {self.wall_seconds:.1f} s",
        ]
        if self.cost:
            stages = self.cost["stages"]
            per_kept = self.cost["per_kept"]
            lines.append(f"engine time       {stages['rollout']['engine_seconds']:.1f} s rollouts + "
                         f"{stages['teacher']['engine_seconds']:.1f} s teacher; per kept example "
                         f"{per_kept['engine_seconds'] or 0:.1f} s, {per_kept['tokens'] or 0:.0f} tokens")
        if self.stop_line:
            lines.append(self.stop_line)
        return "\n".join(lines)


def model_identity(name: str) -> str:
    """What the store records as the model: stable across machines for hub names and the default."""
    path = Path(name)
    return path.name if path.exists() else name


def write_run_config(cfg: RunConfig) -> None:
    if not cfg.layout.remote:
        cfg.layout.config.parent.mkdir(parents=True, exist_ok=True)
        cfg.layout.config.write_text(dump_config(cfg))


class CurationRun:
    """One curation run's bookkeeping, the same for `ssb curate` and a service job: `open`
    loads the problems and opens (or resumes) the store, leaving out problems already done
    (`todo`); `consume` commits curated problems as shards; `close` records and returns the
    summary (also written to the run directory)."""

    def __init__(self, cfg: RunConfig, store: LogitStore, model: str, tokenizer: str, model_path: str,
                 todo: list[Problem], summary: CurationSummary, start: float):
        self.cfg, self.store, self.summary, self.todo = cfg, store, summary, todo
        self.model = model  # the model identity stored with every example
        self.tokenizer = tokenizer  # the tokenizer fingerprint
        self.model_path = model_path
        self._start = start
        self.budget = Budget(**cfg.curate.budget.model_dump())
        self._prior: tuple[int, float, int] | None = None  # the store's spend before this run

    @classmethod
    def open(cls, cfg: RunConfig) -> CurationRun:
        from transformers import AutoTokenizer

        start = time.perf_counter()
        summary = CurationSummary()
        model_path = resolve_model(cfg.model.name)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model, tok_id = model_identity(cfg.model.name), tokenizer_fingerprint(tokenizer)
        problems, report = load_problems(cfg.data)
        summary.problems, summary.load_report = len(problems), report.summary()
        if report.skipped:
            log.warning("problem source: %s", report.summary())
        write_run_config(cfg)
        store = LogitStore.create_or_resume(cfg.store_dir, config_hash=cfg.curation_hash(), model=model,
                                            tokenizer=tok_id, top_k=cfg.curate.top_k,
                                            encoding=encoding_of(cfg.curate.store))
        done = store.done_ids()
        todo = [p for p in problems if p.id not in done]
        summary.already_done = len(problems) - len(todo)
        run = cls(cfg, store, model, tok_id, model_path, todo, summary, start)
        if run.budget_reached():  # spent by earlier runs: nothing starts
            run.todo = []
        return run

    def budget_reached(self) -> str | None:
        """The budget reached by the store's spend (earlier runs' and this one's), or None;
        records it and the line that says how to go on."""
        s = self.summary
        if self.budget == Budget():
            return None  # no limit: the store's earlier spend need not be read
        if self._prior is None:
            spent = spent_per_problem(self.store)
            self._prior = (sum(t for _, t, _ in spent), sum(e for _, _, e in spent), self.store.summary()["rows"])
        tokens, engine, kept = self._prior
        name = self.budget.reached(tokens=tokens + s.generated_tokens, engine_seconds=engine + s.engine_seconds,
                                   wall_seconds=time.perf_counter() - self._start, kept=kept + s.kept)
        if name is not None and s.stopped_by is None:
            s.stopped_by = name
            s.stop_line = stop_message(name, getattr(self.budget, name), self.cfg.output_dir)
            log.info("%s", s.stop_line)
        return name

    def consume(self, batches: Iterable[list[ProblemState]], *, progress: bool,
                on_commit: Callable[[list[ProblemState]], None] | None = None,
                before_commit: Callable[[], None] | None = None) -> None:
        """Commits a shard every `shard_rows` kept examples (and every `commit_every_s`), so a
        killed run loses at most that much work and a rerun resumes after it.

        `on_commit` sees the problems of each commit once it is durable (the service's progress
        counters count only what a restart would not redo); `before_commit` runs before each
        commit and raises to stop the run writing (the service's lease fence)."""
        from tqdm import tqdm

        cfg, summary = self.cfg, self.summary
        kept: list[CuratedExample] = []
        skipped: dict[str, str] = {}
        pending: list[ProblemState] = []
        reasons: Counter[str] = Counter()
        last_commit = time.monotonic()
        started_at = time.time() - (time.perf_counter() - self._start)  # the run's start on the epoch clock

        def commit() -> None:
            nonlocal kept, skipped, pending, last_commit
            if kept or skipped:
                if before_commit is not None:
                    before_commit()
                self.store.append(kept, skipped, [trace_of(state) for state in pending])
                if on_commit is not None:
                    on_commit(pending)
            kept, skipped, pending, last_commit = [], {}, [], time.monotonic()

        bar = tqdm(total=len(self.todo), unit="problem", disable=not progress, dynamic_ncols=True)
        try:
            for batch in batches:
                for state in batch:
                    pending.append(state)
                    summary.processed += 1
                    summary.rollout_tokens += state.rollout_tokens
                    summary.teacher_tokens += state.teacher_tokens
                    summary.engine_seconds += state.engine_seconds
                    summary.rollout_engine_seconds += state.rollout_engine_seconds
                    summary.teacher_engine_seconds += state.teacher_engine_seconds
                    summary.verify_seconds += state.verify_seconds
                    summary.engine_load_seconds += state.engine_load_seconds
                    if state.verified and state.rollouts:
                        correct = sum(r.verdict.is_correct for r in state.rollouts)
                        summary.rollouts += len(state.rollouts)
                        summary.rollouts_correct += correct
                        if state.selection is not None and state.teacher_prompt_ids is not None:
                            summary.mixed += 1
                            summary.mixed_rollouts += len(state.rollouts)
                            summary.mixed_rollouts_correct += correct
                    if state.engine_ready_at:
                        up = state.engine_ready_at - started_at
                        summary.startup_seconds = min(summary.startup_seconds, up) if summary.startup_seconds else up
                    if state.status is not None:
                        skipped[state.problem.id] = state.status.value
                        reasons[state.status.value] += 1
                    else:
                        kept.append(to_example(state, cfg, self.model, self.tokenizer))
                        summary.kept += 1
                bar.update(len(batch))
                elapsed = time.perf_counter() - self._start
                bar.set_postfix(kept=summary.kept, skipped=sum(reasons.values()),
                                tok_s=f"{summary.generated_tokens / max(elapsed, 1e-9):.0f}")
                if len(kept) >= cfg.curate.shard_rows or time.monotonic() - last_commit >= cfg.curate.commit_every_s:
                    commit()
                if self.budget_reached():
                    break  # no new problem starts; what finished is committed below
            commit()
        except BaseException:
            commit()  # problems already finished are complete: keep them, then fail loudly
            raise
        finally:
            bar.close()
            summary.skipped = dict(reasons)

    def close(self) -> CurationSummary:
        self.summary.store = self.store.summary()
        self.summary.wall_seconds = time.perf_counter() - self._start
        self.summary.cost = cost_object(asdict(self.summary))
        if not self.cfg.layout.remote:
            self.cfg.layout.curation_summary.write_text(json.dumps(asdict(self.summary), indent=2))
        return self.summary


def with_adapter(cfg: RunConfig, adapter: str | None) -> RunConfig:
    if adapter is None:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": str(Path(adapter).resolve())})})


def engine_model_for(cfg: RunConfig, model_path: str) -> tuple[RunConfig, str]:
    """What the engine actors load: the base model (+ LoRA requests for cfg.model.adapter), or
    the adapter merged into a copy of it. The store keeps the run's own config hash and the
    base model's identity either way: only how the same student is served differs."""
    if not cfg.model.adapter or not merges_adapters(cfg.curate.merge_adapter, cfg):
        return cfg, model_path
    cfg.layout.local(MERGED_STAGE)
    merged = merged_copy(model_path, cfg.model.adapter, cfg.layout.merged)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": None})}), merged


def run_curation(cfg: RunConfig, *, progress: bool = True, adapter: str | None = None,
                 on_commit: Callable[[list[ProblemState]], None] | None = None) -> CurationSummary:
    """`adapter`: curate with base model + this LoRA adapter (a bootstrapping round > 1).
    `on_commit`: called in this thread with the problems of each durable commit (progress)."""
    from pipelines.ray_setup import init_ray, quiet_data_context

    run = CurationRun.open(with_adapter(cfg, adapter))
    if run.todo:
        init_ray(run.cfg.ray)
        quiet_data_context(run.cfg.engine.wait_for_replicas_s)
        engine_cfg, engine_model = engine_model_for(run.cfg, run.model_path)
        dataset = build_curation_dataset(engine_cfg, [asdict(p) for p in run.todo], engine_model)
        run.consume((to_states(b) for b in dataset.iter_batches(batch_format="pyarrow", batch_size=None)),
                    progress=progress, on_commit=on_commit)
    return run.close()
