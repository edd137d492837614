"""Nothing grows without bound: ended jobs expire (every way a job can end), the per-token
limit counts stored jobs, and old job run directories are removed. Real redis-server."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from services.job_run import prune_run_dirs
from services.job_record import TERMINAL
from services.jobs import JobStore, JobStoreUnavailable, TooManyJobs, TooManyStoredJobs
from services.redis_server import free_port
from services.runner import CurationRunner
from services.settings import ServiceSettings

SPEC = {"source": {"kind": "synthetic", "n": 2}, "rollout": None, "teacher": None, "seed": None}


def _new(jobs: JobStore, owner: str = "alice", spec: dict = SPEC, key: str | None = None) -> str:
    return jobs.create(owner, spec, problems=1, jobs_root="/r", idempotency_key=key, max_active=100)[0].id


def test_every_way_a_job_ends_sets_a_ttl_and_resume_clears_it(redis_dir):
    jobs = JobStore(redis_dir.url, prefix="t", job_ttl_s=600)
    r = redis.Redis.from_url(redis_dir.url, decode_responses=True)
    ended = {}
    for status in TERMINAL:
        ended[f"finish {status}"] = _new(jobs)
        jobs.finish(jobs.claim("r", 30), status)
    ended["cancel while queued"] = _new(jobs)
    assert jobs.cancel(ended["cancel while queued"]) == "cancelled"
    ended["reaped as failed"] = _new(jobs)
    jobs.claim("r", 0.05)
    time.sleep(0.1)
    assert jobs.reap(max_attempts=1) == 1
    ended["reaped as cancelled"] = _new(jobs)
    jobs.claim("r", 0.05)
    assert jobs.cancel(ended["reaped as cancelled"]) == "cancelling"
    time.sleep(0.1)
    assert jobs.reap(max_attempts=5) == 1

    for how, job_id in ended.items():
        assert jobs.get(job_id).status in TERMINAL, how
        assert 0 < r.ttl(f"t:job:{job_id}") <= 600, how
    assert r.keys("t:active:*") == [] and r.llen("t:queue") == 0 and r.zcard("t:running") == 0
    # The stored-jobs index goes with the last record: EXPIREAT rounds that record's expiry up to
    # the next second and adds one, so up to 2 s past the record's own 600.
    assert 0 < r.ttl("t:jobs:alice") <= 602

    assert jobs.resume(ended["reaped as failed"], max_active=4) == "queued"
    assert r.ttl(f"t:job:{ended['reaped as failed']}") == -1 and r.ttl("t:jobs:alice") == -1
    _new(jobs, owner="bob", key="k")
    assert [0 < r.ttl(k) <= 86400 for k in r.keys("t:idem:*")] == [True]


def test_create_then_delete_with_1mb_bodies_does_not_grow_redis(redis_dir):
    jobs = JobStore(redis_dir.url, prefix="t", job_ttl_s=1, idempotency_ttl_s=2)
    r = redis.Redis.from_url(redis_dir.url, decode_responses=True)
    big = {**SPEC, "source": {"kind": "inline"}, "problems": [{"question": "x" * 1_000_000, "answer": "1"}]}
    base_keys, base_mem = r.dbsize(), r.info("memory")["used_memory"]
    peak_jobs = peak_mem = 0
    for i in range(60):
        assert jobs.cancel(_new(jobs, spec=big, key=f"k{i}")) == "cancelled"  # DELETE of a queued job
        time.sleep(0.1)
        peak_jobs = max(peak_jobs, len(r.keys("t:job:*")))
        peak_mem = max(peak_mem, r.info("memory")["used_memory"] - base_mem)
    assert peak_jobs <= 25 and peak_mem < 30e6, (peak_jobs, peak_mem)  # 60 and 60 MB without expiry
    deadline = time.monotonic() + 10
    while r.dbsize() > base_keys:
        assert time.monotonic() < deadline, r.keys("*")
        time.sleep(0.2)
    assert r.info("memory")["used_memory"] - base_mem < 2e6


def test_the_stored_jobs_limit_counts_ended_jobs_until_they_expire(redis_dir):
    jobs = JobStore(redis_dir.url, prefix="t", job_ttl_s=1, max_stored_per_owner=3)
    first = _new(jobs, key="once")
    jobs.cancel(first)
    for _ in range(2):
        jobs.cancel(_new(jobs))
    with pytest.raises(TooManyStoredJobs, match="max_stored_jobs_per_token=3") as info:
        _new(jobs)
    assert isinstance(info.value, TooManyJobs)  # what the API already answers with 429
    assert jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key="once",
                       max_active=100)[0].id == first  # a retry is not a new job
    _new(jobs, owner="bob")
    time.sleep(1.5)
    _new(jobs)


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(parent, name), (when, when))
    os.utime(path, (when, when))


def _run_dir(root: Path, job_id: str, age_s: float = 0) -> Path:
    path = root / job_id
    (path / "curated").mkdir(parents=True)
    (path / "curated" / "manifest.json").write_text("{}")
    if age_s:
        _age(path, age_s)
    return path


def test_sweep_removes_only_old_run_dirs_of_ended_or_expired_jobs(redis_dir, tmp_path):
    jobs = JobStore(redis_dir.url, prefix="t", job_ttl_s=600)
    root = tmp_path / "jobs"
    ended, young = _new(jobs), _new(jobs)
    for _ in range(2):
        jobs.finish(jobs.claim("r", 30), "succeeded")
    running = _new(jobs)
    jobs.claim("r", 30)
    queued, expired = _new(jobs), uuid.uuid4().hex
    for job_id in (ended, running, queued, expired):
        _run_dir(root, job_id, age_s=3600)
    _run_dir(root, young)
    _run_dir(root, "notes", age_s=3600)

    assert sorted(prune_run_dirs(str(root), jobs.get, retention_s=600)) == sorted([ended, expired])
    assert sorted(p.name for p in root.iterdir()) == sorted([young, running, queued, "notes"])

    gone = _run_dir(root, uuid.uuid4().hex, age_s=3600)
    away = JobStore(f"redis://127.0.0.1:{free_port()}/0", prefix="t", timeout_s=0.5)
    with pytest.raises(JobStoreUnavailable):
        prune_run_dirs(str(root), away.get, retention_s=600)
    assert gone.exists()  # an unreadable record is not an expired one


def test_the_runner_sweeps_old_run_dirs_as_it_polls(redis_dir, tmp_path):
    root = tmp_path / "jobs"
    old = _run_dir(root, uuid.uuid4().hex, age_s=3600)
    settings = ServiceSettings.model_validate({"jobs": {
        "redis_url": redis_dir.url, "prefix": "t", "jobs_root": str(root), "poll_s": 0.1,
        "run_dir_retention_s": 600, "prune_every_s": 0.2}, "llm": {"enabled": False}})
    runner = CurationRunner(settings.model_dump_json())
    loop = threading.Thread(target=asyncio.run, args=(runner._loop(),), daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while old.exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        runner._stop.set()
        loop.join(30)
    assert runner.stats["swept"] == 1
