"""Where everything of a run lives inside its run directory: the one place that names it.

    <run_dir>/
      config.yaml                    the resolved config of the last `ssb curate`
      curated/                       the logit store: shard-*.parquet + manifest.json
      curation_summary.json          the curation's counts, tokens and times
      merged/                        adapters merged into base-model copies (curation, `train.merge`)
      train/config.yaml              the resolved config of the training
      train/key.json                 what the trained adapter depends on (pipelines/stages.py)
      train/metrics.jsonl            one line per logged step (rank 0), and resume events
      train/summary.json             the finished training's summary
      train/ray/distill/             Ray Train's checkpoints (storage_path, experiment name)
      train/tensorboard/, train/local-checkpoints/
      adapter/                       the trained LoRA adapter (peft format)
      eval/results.json              label → benchmark → score
      eval/keys.json                 label → benchmark → what its results depend on
      eval/<label>/<benchmark>.jsonl every evaluated problem's outputs and verdicts
      eval/merged/                   adapters merged for evaluation
      diagnostics/curated_problems.jsonl   the round's mixed problems its zero-shot pass answered (`ssb run`)
      diagnostics/eval/              that pass's results and outputs, laid out as eval/ is
      inspect/kl/<problem id>.json   the student's per-token KL to the teacher (`ssb inspect`, on demand)
      round-<r>/                     bootstrapping round r ≥ 2: the same layout again
      timings.json                   stage → seconds (`ssb run`)
      report.json, report.md, accuracy.png, loss.png
      logs/driver.log, logs/ray/     library and Ray worker logs of the CLI commands
      jobs/<job id>/                 the curation service's job run directories (`ssb serve`)
      redis/                         the service's own Redis (append-only file; supervisor.log: its
                                     restarts and their causes)
      inline.jsonl                   a service job's problems given in the request

A run directory may be a URI (s3://, gs://, ...). Only two parts of it are written through
a pyarrow filesystem and so work there: the logit store (ssb/store.py) and Ray Train's
checkpoints. Everything else is read and written with local file operations; a stage that
needs those asks `local(stage)` first, which refuses a remote root by naming the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ssb.manifest import MANIFEST

CURATED = "curated"
CONFIG = "config.yaml"
CURATION_SUMMARY = "curation_summary.json"
MERGED = "merged"
TRAIN = "train"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TRAIN_KEY = "key.json"
RAY_STORAGE = "ray"
EXPERIMENT = "distill"  # Ray Train's experiment name under train/ray/
TENSORBOARD = "tensorboard"
LOCAL_CHECKPOINTS = "local-checkpoints"
ADAPTER = "adapter"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: its presence makes a directory an adapter
EVAL = "eval"
RESULTS = "results.json"
EVAL_KEYS = "keys.json"
TIMINGS = "timings.json"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
ACCURACY_PLOT, LOSS_PLOT = "accuracy.png", "loss.png"
LOGS = "logs"
DRIVER_LOG = "driver.log"
NATIVE_LOG = "native.log"
WORKER_LOGS = "ray"
JOBS = "jobs"
REDIS = "redis"
REDIS_SUPERVISOR_LOG = "supervisor.log"  # under redis/: each restart of the embedded Redis
INLINE = "inline.jsonl"
INSPECT = "inspect"
INSPECT_KL = "kl"
# A Ray Train checkpoint directory (under train/ray/distill/checkpoint_*/) holds these.
CHECKPOINT_ADAPTER = ADAPTER
CHECKPOINT_STATE = "train_state.pt"

# Per-round diagnostics (ssb/diagnostics.py): the curating model's zero-shot pass over the
# round's mixed problems, kept apart from the run's own evaluation.
DIAGNOSTICS = "diagnostics"
DIAGNOSTIC_PROBLEMS = "curated_problems.jsonl"

# `ssb sweep` (pipelines/sweep.py): several training settings on the run's one store.
#   sweep/<setting>/                 one training setting: a run directory of its own (round 1 trains
#                                    on the shared curated/; round-<r>/ as in `ssb run --rounds`)
#   sweep.md, sweep.json, sweep.png  the comparison: accuracy per setting and benchmark, losses
SWEEP = "sweep"
SWEEP_MD, SWEEP_JSON, SWEEP_PLOT = "sweep.md", "sweep.json", "sweep.png"

ROUND_PREFIX = "round-"
_ROUND = re.compile(re.escape(ROUND_PREFIX) + r"(\d+)$")


def round_name(r: int) -> str:
    """`round-<r>`: round r's directory under the run directory, and its evaluation label."""
    return f"{ROUND_PREFIX}{r}"


def round_number(name: str) -> int | None:
    m = _ROUND.match(name)
    return int(m.group(1)) if m else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of one of the run's JSON-lines files (metrics, per-problem outputs); none
    when the stage that writes it has not run."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_remote(location: str) -> bool:
    """A URI (s3://bucket/x, gs://..., memory://...) rather than a local or mounted path."""
    return "://" in location


def job_dir(jobs_root: str, job_id: str) -> str:
    """A service job's run directory: `<jobs_root>/<job id>`."""
    return f"{jobs_root.rstrip('/')}/{job_id}"


class RemoteRunDirError(ValueError):
    """A stage that keeps files with local file operations was given a URI run directory."""


def needs_local(stage: str, location: str, what: str = "run directory") -> RemoteRunDirError:
    return RemoteRunDirError(
        f"{stage} needs a local or shared-filesystem {what}, but {location} is remote: only the logit store "
        f"({CURATED}/) and Ray Train's checkpoints ({TRAIN}/{RAY_STORAGE}/) can live behind a URI. Give a path "
        "every node mounts (docs/scaling.md, 'Storage')")


@dataclass(frozen=True)
class RunLayout:
    """The files and directories of one run directory.

    `curated`, `manifest` and `train_ray` are strings, URIs when the root is one. Every other
    name is a local Path and refuses a remote root (a stage checks `local(stage)` first, so
    the error names it)."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def uri(self, *parts: str) -> str:
        """A name under the root as a string, the way a pyarrow filesystem takes it."""
        return "/".join([self.root.rstrip("/"), *parts])

    def local(self, stage: str) -> Path:
        """The root as a local Path; RemoteRunDirError naming `stage` when the root is a URI."""
        if self.remote:
            raise needs_local(stage, self.root)
        return Path(self.root)

    def _path(self, *parts: str) -> Path:
        if self.remote:
            raise needs_local(f"{'/'.join(parts)} (a local file of the run)", self.root)
        return Path(self.root, *parts)

    # -- curation ---------------------------------------------------------------------------
    @property
    def curated(self) -> str:
        return self.uri(CURATED)

    @property
    def manifest(self) -> str:
        return self.uri(CURATED, MANIFEST)

    @property
    def config(self) -> Path:
        return self._path(CONFIG)

    @property
    def curation_summary(self) -> Path:
        return self._path(CURATION_SUMMARY)

    @property
    def merged(self) -> Path:
        return self._path(MERGED)

    # -- training ---------------------------------------------------------------------------
    @property
    def train(self) -> Path:
        return self._path(TRAIN)

    @property
    def train_config(self) -> Path:
        return self._path(TRAIN, CONFIG)

    @property
    def train_key(self) -> Path:
        return self._path(TRAIN, TRAIN_KEY)

    @property
    def train_metrics(self) -> Path:
        return self._path(TRAIN, METRICS)

    @property
    def train_summary(self) -> Path:
        return self._path(TRAIN, SUMMARY)

    @property
    def train_ray(self) -> str:
        return self.uri(TRAIN, RAY_STORAGE)

    @property
    def train_experiment(self) -> Path:
        return self._path(TRAIN, RAY_STORAGE, EXPERIMENT)

    @property
    def train_tensorboard(self) -> Path:
        return self._path(TRAIN, TENSORBOARD)

    def local_checkpoint(self, step: int) -> Path:
        return self._path(TRAIN, LOCAL_CHECKPOINTS, f"step-{step:06d}")

    @property
    def adapter(self) -> Path:
        return self._path(ADAPTER)

    @property
    def adapter_config(self) -> Path:
        return self._path(ADAPTER, ADAPTER_CONFIG)

    # -- evaluation -------------------------------------------------------------------------
    @property
    def eval(self) -> Path:
        return self._path(EVAL)

    @property
    def eval_results(self) -> Path:
        return self._path(EVAL, RESULTS)

    @property
    def eval_keys(self) -> Path:
        return self._path(EVAL, EVAL_KEYS)

    @property
    def eval_merged(self) -> Path:
        return self._path(EVAL, MERGED)

    def eval_outputs(self, label: str, benchmark: str) -> Path:
        return self._path(EVAL, label, f"{benchmark}.jsonl")

    # -- the inspector ------------------------------------------------------------------------
    def inspect_kl(self, problem_id: str) -> Path:
        """The cached per-token KL of one kept problem. Problem ids come from data files: quoted so
        none can name a path outside `inspect/kl/`, hashed when too long for a file name."""
        name = quote(problem_id, safe="")
        if len(name) > 200 or name.startswith("."):
            name = hashlib.sha256(problem_id.encode()).hexdigest()
        return self._path(INSPECT, INSPECT_KL, f"{name}.json")

    # -- the whole run ----------------------------------------------------------------------
    def round(self, r: int) -> RunLayout:
        """Round 1 is the run directory itself; round r ≥ 2 is `round-<r>/` under it."""
        return self if r == 1 else RunLayout(self.uri(round_name(r)))

    def rounds(self) -> list[tuple[int, RunLayout]]:
        """(round, layout) of every round on disk, round 1 first."""
        found = [(1, self)]
        for child in sorted(self.local("finding a run's rounds").glob(f"{ROUND_PREFIX}*")):
            r = round_number(child.name)
            if r is not None and r >= 2 and child.is_dir():
                found.append((r, self.round(r)))
        return sorted(found, key=lambda x: x[0])

    @property
    def timings(self) -> Path:
        return self._path(TIMINGS)

    @property
    def report_json(self) -> Path:
        return self._path(REPORT_JSON)

    @property
    def report_md(self) -> Path:
        return self._path(REPORT_MD)

    @property
    def accuracy_plot(self) -> Path:
        return self._path(ACCURACY_PLOT)

    @property
    def loss_plot(self) -> Path:
        return self._path(LOSS_PLOT)

    @property
    def logs(self) -> Path:
        return self._path(LOGS)

    @property
    def driver_log(self) -> Path:
        return self._path(LOGS, DRIVER_LOG)

    @property
    def native_log(self) -> Path:
        return self._path(LOGS, NATIVE_LOG)

    @property
    def worker_logs(self) -> Path:
        return self._path(LOGS, WORKER_LOGS)

    # -- the curation service -----------------------------------------------------------------
    @property
    def jobs(self) -> Path:
        return self._path(JOBS)

    @property
    def redis(self) -> Path:
        return self._path(REDIS)

    @property
    def redis_supervisor_log(self) -> Path:
        return self._path(REDIS, REDIS_SUPERVISOR_LOG)

    @property
    def inline(self) -> Path:
        return self._path(INLINE)

    # -- per-round diagnostics ------------------------------------------------------------------
    @property
    def diagnostics(self) -> RunLayout:
        """`diagnostics/` as a run directory of its own: the zero-shot pass's eval/ lives there,
        so its results never mix with the benchmarks' in eval/results.json."""
        return RunLayout(str(self._path(DIAGNOSTICS)))

    @property
    def diagnostic_problems(self) -> Path:
        return self._path(DIAGNOSTICS, DIAGNOSTIC_PROBLEMS)

    # -- ssb sweep ------------------------------------------------------------------------------
    def sweep_setting(self, name: str) -> RunLayout:
        """`sweep/<name>/`: one training setting of a sweep, laid out as a run directory."""
        return RunLayout(self.uri(SWEEP, name))

    @property
    def sweep_md(self) -> Path:
        return self._path(SWEEP_MD)

    @property
    def sweep_json(self) -> Path:
        return self._path(SWEEP_JSON)

    @property
    def sweep_plot(self) -> Path:
        return self._path(SWEEP_PLOT)
