"""A curation job's record as the API and the runner see it: typed, with its status an enum.

Redis keeps the record as a hash of strings (services/jobs.py); `JobRecord.from_redis` and
`JobRecord.to_redis` are the one place where the two meet. The Lua scripts of the job store
write the same status names, so the enum's values are the stored (and the wire's) strings.
"""

from __future__ import annotations

import json
from enum import StrEnum
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# A failed or cancelled job can be requeued (POST .../resume); it resumes from its store.
RESUMABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
COUNTERS = ("rolled_out", "verified", "kept", "skipped")
# What the job's committed problems cost, summed over its attempts (work a resume skips is not redone).
COST_COUNTERS = ("rollout_tokens", "teacher_tokens", "rollout_engine_ms", "teacher_engine_ms", "verify_ms")
_INTS = ("problems", "attempts", "epoch", *COUNTERS, *COST_COUNTERS)
_JSON = ("spec", "result")
_FLAGS = ("cancel_requested", "resumable")
_SKIPPED = "skipped:"  # per-reason counters: skipped:<reason>


class JobRecord(BaseModel):
    """One job. `spec` is what the request asked for (services.job_spec.JobSpec as JSON);
    `runner`, `lease_until` and `epoch` are the lease the job store fences writes with."""

    model_config = ConfigDict(extra="ignore")

    id: str
    owner: str
    status: JobStatus
    created_at: str
    updated_at: str
    spec: dict[str, Any]
    problems: int
    run_dir: str
    attempts: int = 0
    epoch: int = 0
    cancel_requested: bool = False
    resumable: bool = False
    rolled_out: int = 0
    verified: int = 0
    kept: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = {}
    rollout_tokens: int = 0
    teacher_tokens: int = 0
    rollout_engine_ms: int = 0
    teacher_engine_ms: int = 0
    verify_ms: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    runner: str | None = None
    lease_until: float | None = None
    error: str | None = None
    load_report: str | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def from_redis(cls, raw: Mapping[str, str]) -> JobRecord:
        """The job store's hash (all strings) → a record: counters as ints, spec and result as
        JSON, flags as bools, per-reason skip counters gathered."""
        fields: dict[str, Any] = {k: v for k, v in raw.items() if not k.startswith(_SKIPPED)}
        for key in _INTS:
            fields[key] = int(raw.get(key) or 0)
        for key in _JSON:
            if key in raw:
                fields[key] = json.loads(raw[key])
        for key in _FLAGS:
            fields[key] = raw.get(key) == "1"
        fields["skipped_by_reason"] = {k[len(_SKIPPED):]: int(v) for k, v in raw.items() if k.startswith(_SKIPPED)}
        return cls.model_validate(fields)

    def to_redis(self) -> dict[str, str]:
        """The hash a new record is stored as (the inverse of from_redis; unset fields left out)."""
        out: dict[str, str] = {}
        for key, value in self.model_dump(exclude={"skipped_by_reason"}, exclude_none=True).items():
            if key in _JSON:
                out[key] = json.dumps(value)
            elif key in _FLAGS:
                out[key] = "1" if value else "0"
            else:
                out[key] = str(value)
        out.update({f"{_SKIPPED}{reason}": str(n) for reason, n in self.skipped_by_reason.items()})
        return out
