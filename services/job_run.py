"""One curation job, run by the service: the same stages, store and commits as `ssb curate`.

The job's config is the service's run config with the request's settings (its sampling
fields, then its dotted overrides, through `ssb.config.apply_overrides`) and its own run
directory; problems come from a file under the allowed roots, the synthetic set, or the
request itself (written to `<run_dir>/inline.jsonl` and read back by the normal loader, so
they are validated and named exactly as a file given to `ssb curate` would be). Batches of
`engine.batch_size` problems go to the EngineReplica deployment (or a Curator sampling
through the OpenAI endpoint), and a `pipelines.curate.CurationRun` commits them to the
LogitStore: the shards and manifest `ssb curate` writes for the same problems and seed (each
request is seeded from the problem id, not from the engine or the batch;
services/engine_deployment.py says how far "the same" goes).

A job stopped anywhere (runner killed, cancelled, Redis gone) resumes from its store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable, Iterator

from ssb.config import RunConfig, apply_overrides
from ssb.layout import RunLayout
from ssb.manifest import MANIFEST
from ssb.records import Problem, ProblemState, SkipReason

from pipelines.curate import CurationRun, CurationSummary
from services.job_record import TERMINAL, JobRecord
from services.job_spec import ROLES, JobSpec
from services.settings import ServiceSettings, resolve_under

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


class BatchTimeout(Exception):
    pass


def job_config(settings: ServiceSettings, spec: JobSpec, run_dir: str) -> RunConfig:
    """The run config of one job: the service's defaults + the request's settings."""
    tree = settings.run.model_dump()
    tree["run_dir"] = run_dir
    tree["name"] = Path(run_dir).name
    data = tree["data"]
    source = spec.source
    data["limit"] = source.limit
    if source.kind == "synthetic":
        data["source"] = "synthetic"
        data["synthetic"].update({k: v for k in ("n", "seed", "difficulty") if (v := getattr(source, k)) is not None})
    elif source.kind == "dataset":
        path = resolve_under(source.path or "", settings.api.allowed_data_roots)
        if path is None:  # the API checked this; a changed filesystem or settings is refused again
            raise ValueError("the dataset is no longer inside the allowed roots")
        data["source"], data["split"] = str(path), source.split or data["split"]
    else:
        data["source"] = str(RunLayout(run_dir).inline)
    curate = tree["curate"]
    for role in ROLES:
        sampling = getattr(spec, role)
        if sampling is not None:
            curate[role].update(sampling.model_dump(exclude_none=True))
    if spec.seed is not None:
        curate["seed"] = spec.seed
    apply_overrides(tree, spec.overrides)  # after the fields above, as on the command line
    if spec.budget is not None:
        curate["budget"] = spec.budget.model_dump()
    if spec.adapter:
        root = settings.llm.lora_root
        path = resolve_under(spec.adapter, [root] if root else [])
        if path is None:
            raise ValueError(f"adapter {spec.adapter!r} is not served")
        tree["model"]["adapter"] = str(path)
    return RunConfig.model_validate(tree)


def write_inline(run_dir: str, problems: list[dict[str, Any]]) -> None:
    path = RunLayout(run_dir).inline
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # a resumed job keeps the file its first attempt wrote
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in problems))
        tmp.replace(path)


def progress_of(states: list[ProblemState]) -> dict[str, int]:
    """What a committed batch adds to the job's counters."""
    counts: Counter[str] = Counter()
    for state in states:
        if state.rollouts is not None:
            counts["rolled_out"] += 1
        if state.verified:
            counts["verified"] += 1
        if state.status is not None:
            counts["skipped"] += 1
            counts[f"skipped:{state.status.value}"] += 1
        else:
            counts["kept"] += 1
        counts["rollout_tokens"] += state.rollout_tokens
        counts["teacher_tokens"] += state.teacher_tokens
        counts["rollout_engine_ms"] += round(state.rollout_engine_seconds * 1000)
        counts["teacher_engine_ms"] += round(state.teacher_engine_seconds * 1000)
        counts["verify_ms"] += round(state.verify_seconds * 1000)
    return dict(counts)


Processor = Callable[[list[Problem]], list[ProblemState]]


def _batches(cfg: RunConfig, todo: list[Problem], process: Processor, concurrency: int,
             should_stop: Callable[[], bool], timeout_s: float | None = None) -> Iterator[list[ProblemState]]:
    """Problem batches through curation, `concurrency` batches in flight (engine replicas ×
    `engine.max_concurrent_batches`). Batches are `engine.batch_size` problems in order. A batch not
    back within `timeout_s` of being waited for raises BatchTimeout: a hung engine must not
    hold a job (and its lease) forever."""
    size = cfg.engine.batch_size
    chunks = [todo[i: i + size] for i in range(0, len(todo), size)]
    stopped = False
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ssb-batch")

    def result(future: Any) -> list[ProblemState]:
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise BatchTimeout(f"a batch took longer than batch_timeout_s={timeout_s}") from None

    try:
        running = []
        for chunk in chunks:
            if should_stop():
                stopped = True
                break
            running.append(pool.submit(process, chunk))
            if len(running) >= concurrency:
                yield result(running.pop(0))
        for future in running:  # batches already sent are finished and kept, cancelled or not
            yield result(future)
    finally:
        # Never wait here for a hung or abandoned batch: its thread ends when the engine answers.
        pool.shutdown(wait=False, cancel_futures=True)
    if stopped:
        raise JobCancelled()


def run_job(settings: ServiceSettings, spec: JobSpec, run_dir: str,
            processor: Callable[[RunConfig], Processor], *, on_commit: Callable[[dict[str, int]], None],
            should_stop: Callable[[], bool], concurrency: int = 1,
            on_start: Callable[[int, str], None] | None = None,
            fence: Callable[[], None] | None = None) -> CurationSummary:
    """Runs (or resumes) a job to the end; JobCancelled when `should_stop` turned true.
    `processor(cfg)` gives the function that curates one batch of problems;
    `on_start(problems, load_report)` learns how many problems the job really has (a dataset's
    limit is a bound) and what the loader skipped and why; `fence()` runs before every write
    to the run directory and raises to stop the job writing."""
    check = fence or (lambda: None)
    check()
    if spec.source.kind == "inline":
        write_inline(run_dir, spec.problems or [])
    cfg = job_config(settings, spec, run_dir)
    run = CurationRun.open(cfg)
    if on_start is not None:
        on_start(run.summary.problems, run.summary.load_report)
    if run.todo:
        batches = _batches(cfg, run.todo, processor(cfg), concurrency, should_stop, settings.jobs.batch_timeout_s)
        # The fence runs before every commit: a runner that lost its lease never adds a shard.
        run.consume(batches, progress=False, on_commit=lambda states: on_commit(progress_of(states)),
                    before_commit=check)
    check()
    return run.close()


def result_of(cfg_store_dir: str, summary: CurationSummary) -> dict[str, Any]:
    """Where the job's examples are: the store (shards + manifest) and what it holds."""
    return {"store": cfg_store_dir, "manifest": f"{cfg_store_dir.rstrip('/')}/{MANIFEST}",
            "rows": summary.store.get("rows", 0), "shards": summary.store.get("shards", 0),
            "kept": summary.kept, "skipped": summary.skipped, "problems": summary.problems,
            "already_done": summary.already_done, "stopped_by": summary.stopped_by,
            "stop": summary.stop_line or None}


SKIP_REASONS = [r.value for r in SkipReason]


def prune_run_dirs(jobs_root: str, get_record: Callable[[str], JobRecord | None], retention_s: float,
                   now: float | None = None) -> list[str]:
    """Removes old job run directories; returns the job ids whose directory went.

    `<jobs_root>/<id>` goes once nothing in it changed for `retention_s` seconds and its job
    ended (succeeded, failed, cancelled) or its record expired (`get_record` gives None). A
    queued or running job keeps its directory at any age; names that are not job ids are
    never touched. `get_record` raising (Redis unavailable) stops the pruning: a record that
    cannot be read is not an expired one.
    """
    root = Path(jobs_root)
    if retention_s <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - retention_s
    removed = []
    for path in sorted(root.iterdir()):
        if not (_JOB_ID.fullmatch(path.name) and path.is_dir() and _newest_mtime(path) < cutoff):
            continue
        record = get_record(path.name)
        if record is None or record.status in TERMINAL:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


_JOB_ID = re.compile(r"[0-9a-f]{32}")


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except OSError:  # removed while we looked: something is still writing
                return float("inf")
    return newest
