"""What the curation API answers: its response models, and job records as a client sees them.

Paths in job records and examples are relative to the jobs root: the server's own layout is
not the client's business (`ClientPaths`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.job_record import JobRecord, JobStatus


class Progress(BaseModel):
    rolled_out: int
    verified: int
    kept: int
    skipped: int
    skipped_by_reason: dict[str, int]


class StageCost(BaseModel):
    tokens: int
    engine_seconds: float


class JobCost(BaseModel):
    """What the job's committed problems cost so far, over all its attempts: engine-busy seconds
    split between the stages (ssb/cost.py), the verifier's seconds, and per kept example."""

    rollout: StageCost
    teacher: StageCost
    tokens: int
    engine_seconds: float
    verify_seconds: float
    tokens_per_kept: float | None
    engine_seconds_per_kept: float | None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    problems: int
    progress: Progress
    cost: JobCost
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int
    cancel_requested: bool
    error: str | None = None
    resumable: bool
    result: dict[str, Any] | None = None
    # What the problem loader skipped and why (malformed records), once the job has started.
    load_report: str | None = None


class ExamplesOut(BaseModel):
    job_id: str
    total: int
    offset: int
    limit: int
    next_offset: int | None
    examples: list[dict[str, Any]]


class Detail(BaseModel):
    detail: str


class Invalid(BaseModel):
    """422: FastAPI's list of field errors, or one line naming the rule a valid-looking request breaks."""

    detail: str | list[dict[str, Any]]


class CurateOut(BaseModel):
    job: JobOut
    examples: list[dict[str, Any]]


def doc(status: int, why: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Detail, "description": why}}


# Every answer a route can give is in the schema, so clients (and the schema-driven tests) can
# rely on it: errors are always {"detail": ...}.
COMMON = {**doc(400, "the body is not valid JSON"), **doc(401, "no valid bearer token (all but GET /healthz)"),
          **doc(503, "the job store (Redis) is unavailable: retry")}
ONE_JOB = doc(404, "no such job for this token")
SUBMIT = {**doc(413, "over a size or count limit"), **doc(429, "too many jobs of this token"),
          422: {"model": Invalid, "description": "malformed input, or a rule of the request broken (e.g. a "
                                                 "bad override, a dataset outside the allowed roots)"}}

_ABS_PATH = re.compile(r"(?:file://)?/[^\s'\"():,]+")


class ClientPaths:
    """Server paths as a client sees them: relative to the jobs root, or hidden."""

    def __init__(self, jobs_root: str, data_roots: list[str]):
        self.jobs_root = str(Path(jobs_root).resolve())
        self.data_roots = [str(Path(r).resolve()) for r in data_roots]

    def path(self, value: str) -> str | None:
        plain = Path(value.removeprefix("file://"))
        if not plain.is_absolute():
            return value
        return plain.relative_to(self.jobs_root).as_posix() if plain.is_relative_to(self.jobs_root) else None

    def text(self, value: str) -> str:
        """Free text (an error): each absolute path relative to its root, or "<path>"."""
        def one(m: re.Match) -> str:
            plain = m.group(0).removeprefix("file://")
            for root in (self.jobs_root, *self.data_roots):
                if Path(plain).is_relative_to(root):
                    return Path(plain).relative_to(root).as_posix()
            return "<path>"
        return _ABS_PATH.sub(one, value)

    def tree(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, str) and value.startswith(("/", "file://")):
            return self.path(value)
        return value

    def example(self, row: dict[str, Any]) -> dict[str, Any]:
        logits = row.get("logits")
        if isinstance(logits, dict) and isinstance(logits.get("shard"), str):
            row = {**row, "logits": {**logits, "shard": self.path(logits["shard"])}}
        return row


def job_cost(record: JobRecord) -> JobCost:
    rollout = StageCost(tokens=record.rollout_tokens, engine_seconds=record.rollout_engine_ms / 1000)
    teacher = StageCost(tokens=record.teacher_tokens, engine_seconds=record.teacher_engine_ms / 1000)
    tokens, seconds = rollout.tokens + teacher.tokens, rollout.engine_seconds + teacher.engine_seconds
    kept = record.kept
    return JobCost(rollout=rollout, teacher=teacher, tokens=tokens, engine_seconds=round(seconds, 3),
                   verify_seconds=record.verify_ms / 1000, tokens_per_kept=round(tokens / kept, 1) if kept else None,
                   engine_seconds_per_kept=round(seconds / kept, 3) if kept else None)


def job_out(record: JobRecord, paths: ClientPaths) -> JobOut:
    progress = Progress(rolled_out=record.rolled_out, verified=record.verified, kept=record.kept,
                        skipped=record.skipped, skipped_by_reason=record.skipped_by_reason)
    return JobOut(id=record.id, status=record.status, problems=record.problems, progress=progress,
                  cost=job_cost(record),
                  created_at=record.created_at, updated_at=record.updated_at, started_at=record.started_at,
                  finished_at=record.finished_at, attempts=record.attempts, cancel_requested=record.cancel_requested,
                  error=paths.text(record.error) if record.error else None, resumable=record.resumable,
                  result=paths.tree(record.result),
                  load_report=paths.text(record.load_report) if record.load_report else None)
