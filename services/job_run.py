"""One curation job, run by the service: the same stages, store and commits as `ssb curate`.

The job's config is the service's run config with the request's overrides and its own run
directory; problems come from a file under the allowed roots, the synthetic set, or the
request itself (written to `<run_dir>/inline.jsonl` and read back by the normal loader, so
they are validated and named exactly as a file given to `ssb curate` would be). Batches of
`engine.batch_size` problems go through `curation_stages` with a `ServedSampler`, and
`pipelines.curate.consume` commits them to the LogitStore: the shards and manifest `ssb curate`
writes for the same problems and seed (each request is seeded from the problem id, not from
the engine or the batch; services/engine_deployment.py says how far "the same" goes).

A job stopped anywhere (runner killed, cancelled, Redis gone) resumes from its store.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from ssb.config import RunConfig
from ssb.records import SkipReason

from pipelines.curate import CurationSummary, close_run, consume, open_run
from pipelines.stages import Row, new_row, to_table
from services.settings import ServiceSettings, resolve_under

log = logging.getLogger(__name__)

SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens")


class JobCancelled(Exception):
    pass


def job_config(settings: ServiceSettings, spec: dict[str, Any], run_dir: str) -> RunConfig:
    """The run config of one job: the service's defaults + the request's overrides."""
    tree = settings.run.model_dump()
    tree["run_dir"] = run_dir
    tree["name"] = Path(run_dir).name
    data = tree["data"]
    source = spec["source"]
    data["limit"] = source.get("limit")
    if source["kind"] == "synthetic":
        data["source"] = "synthetic"
        data["synthetic"].update({k: source[k] for k in ("n", "seed", "difficulty") if source.get(k) is not None})
    elif source["kind"] == "dataset":
        path = resolve_under(source["path"], settings.api.allowed_data_roots)
        if path is None:  # the API checked this; a changed filesystem or settings is refused again
            raise ValueError("the dataset is no longer inside the allowed roots")
        data["source"], data["split"] = str(path), source.get("split") or data["split"]
    else:
        data["source"] = str(Path(run_dir) / "inline.jsonl")
    curate = tree["curate"]
    for role in ("rollout", "teacher"):
        for key, value in (spec.get(role) or {}).items():
            if key in SAMPLING_KEYS and value is not None:
                curate[role][key] = value
    if spec.get("seed") is not None:
        curate["seed"] = spec["seed"]
    if spec.get("adapter"):
        root = settings.llm.lora_root
        path = resolve_under(spec["adapter"], [root] if root else [])
        if path is None:
            raise ValueError(f"adapter {spec['adapter']!r} is not served")
        tree["model"]["adapter"] = str(path)
    return RunConfig.model_validate(tree)


def write_inline(run_dir: str, problems: list[dict[str, Any]]) -> None:
    path = Path(run_dir) / "inline.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # a resumed job keeps the file its first attempt wrote
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in problems))
        tmp.replace(path)


def progress_of(rows: list[Row]) -> dict[str, int]:
    """What a committed batch adds to the job's counters."""
    counts: Counter[str] = Counter()
    for row in rows:
        if row["rollout_texts"] is not None:
            counts["rolled_out"] += 1
        if row["rollout_verdicts"] is not None:
            counts["verified"] += 1
        if row["status"]:
            counts["skipped"] += 1
            counts[f"skipped:{row['status']}"] += 1
        else:
            counts["kept"] += 1
    return dict(counts)


Processor = Callable[[list[Row]], list[Row]]


def _batches(cfg: RunConfig, todo: list[dict[str, Any]], process: Processor, concurrency: int,
             should_stop: Callable[[], bool]) -> Iterator[pa.Table]:
    """Problem batches through the stages, `concurrency` batches in flight (one per engine
    replica). Batches are `ssb curate`'s: `engine.batch_size` problems in order."""
    size = cfg.engine.batch_size
    chunks = [todo[i: i + size] for i in range(0, len(todo), size)]
    stopped = False
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ssb-batch") as pool:
        running = []
        for chunk in chunks:
            if should_stop():
                stopped = True
                break
            running.append(pool.submit(process, [new_row(p) for p in chunk]))
            if len(running) >= concurrency:
                yield to_table(running.pop(0).result())
        for future in running:  # batches already sent are finished and kept, cancelled or not
            yield to_table(future.result())
    if stopped:
        raise JobCancelled()


def run_job(settings: ServiceSettings, spec: dict[str, Any], run_dir: str,
            processor: Callable[[RunConfig], Processor], *, on_commit: Callable[[dict[str, int]], None],
            should_stop: Callable[[], bool], concurrency: int = 1,
            on_start: Callable[[int], None] | None = None) -> CurationSummary:
    """Runs (or resumes) a job to the end; JobCancelled when `should_stop` turned true.
    `processor(cfg)` gives the function that runs the four stages on one batch of rows;
    `on_start` learns how many problems the job really has (a dataset's limit is a bound)."""
    if spec["source"]["kind"] == "inline":
        write_inline(run_dir, spec["problems"])
    cfg = job_config(settings, spec, run_dir)
    start = time.perf_counter()
    summary = CurationSummary()
    run = open_run(cfg, summary)
    if on_start is not None:
        on_start(summary.problems)
    if run.todo:
        consume(_batches(cfg, run.todo, processor(cfg), concurrency, should_stop), cfg, run.store, summary,
                run.model, run.tokenizer, progress=False, total=len(run.todo), start=start,
                on_commit=lambda rows: on_commit(progress_of(rows)))
    close_run(cfg, run, summary, start)
    return summary


def result_of(cfg_store_dir: str, summary: CurationSummary) -> dict[str, Any]:
    """Where the job's examples are: the store (shards + manifest) and what it holds."""
    return {"store": cfg_store_dir, "manifest": f"{cfg_store_dir.rstrip('/')}/manifest.json",
            "rows": summary.store.get("rows", 0), "shards": summary.store.get("shards", 0),
            "kept": summary.kept, "skipped": summary.skipped, "problems": summary.problems,
            "already_done": summary.already_done}


SKIP_REASONS = [r.value for r in SkipReason]
