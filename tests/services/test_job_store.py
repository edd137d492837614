"""Jobs in a real redis-server: creation, idempotency, limits, leases, cancel, restarts, outages."""

from __future__ import annotations

import time

import pytest

from services.jobs import JobStore, JobStoreUnavailable, TooManyJobs
from services.auth import deployment_salt, owner_id
from services.redis_server import RedisServer, free_port

SPEC = {"source": {"kind": "synthetic", "n": 2}, "rollout": None, "teacher": None, "seed": None}


def _store(server: RedisServer, **kw) -> JobStore:
    return JobStore(server.url, prefix="t", **kw)


def test_a_created_job_is_queued_with_zero_progress(redis_dir):
    jobs = _store(redis_dir)
    record, created = jobs.create("alice", SPEC, problems=2, jobs_root="/runs", idempotency_key=None, max_active=4)
    assert created and record.status == "queued" and record.problems == 2
    assert record.run_dir == f"/runs/{record.id}"
    assert (record.rolled_out, record.verified, record.kept, record.skipped) == (0, 0, 0, 0)
    assert record.spec == SPEC and jobs.queue_length() == 1


def test_an_idempotency_key_returns_the_same_job_per_owner(redis_dir):
    jobs = _store(redis_dir)
    first, created = jobs.create("alice", SPEC, problems=2, jobs_root="/r", idempotency_key="k1", max_active=4)
    again, created_again = jobs.create("alice", SPEC, problems=2, jobs_root="/r", idempotency_key="k1", max_active=4)
    other, _ = jobs.create("bob", SPEC, problems=2, jobs_root="/r", idempotency_key="k1", max_active=4)
    assert created and not created_again and again.id == first.id
    assert other.id != first.id
    assert jobs.queue_length() == 2


def test_the_concurrent_jobs_limit_counts_queued_and_running_jobs(redis_dir):
    jobs = _store(redis_dir)
    ids = [jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=None, max_active=2)[0].id
           for _ in range(2)]
    with pytest.raises(TooManyJobs, match="max_concurrent_jobs_per_token=2"):
        jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=None, max_active=2)
    lease = jobs.claim("r1", 30)
    assert lease.job_id == ids[0]
    jobs.finish(lease, "succeeded", {"result": {"rows": 1}})
    jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=None, max_active=2)  # room again


def test_a_lost_runner_lease_requeues_the_job_then_fails_it_resumable(redis_dir):
    jobs = _store(redis_dir)
    job_id = jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=None, max_active=4)[0].id
    for attempt in (1, 2):
        assert jobs.claim(f"runner-{attempt}", 0.05).job_id == job_id
        time.sleep(0.1)
        assert jobs.reap(max_attempts=2) == 1
        record = jobs.get(job_id)
    assert record.status == "failed" and record.resumable and "resubmit" in record.error
    assert jobs.resume(job_id, max_active=4) == "queued"
    assert jobs.claim("runner-3", 30).job_id == job_id


def test_cancel_a_queued_job_removes_it_from_the_queue(redis_dir):
    jobs = _store(redis_dir)
    job_id = jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=None, max_active=4)[0].id
    assert jobs.cancel(job_id) == "cancelled"
    assert jobs.claim("r", 30) is None
    assert jobs.get(job_id).status == "cancelled"


def test_a_redis_crash_loses_no_acknowledged_job(redis_dir):
    jobs = _store(redis_dir)
    made = [jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key=f"k{i}", max_active=100)[0]
            for i in range(20)]
    lease = jobs.claim("r", 300)
    jobs.add_progress(lease, {"rolled_out": 1, "skipped": 1, "skipped:no_correct_rollout": 1})
    redis_dir.stop(kill=True)  # SIGKILL: only what the append-only file holds survives
    with pytest.raises(JobStoreUnavailable, match="unavailable"):
        jobs.get(made[0].id)
    redis_dir.start()
    for record in made:
        assert jobs.get(record.id) is not None
    progressed = jobs.get(lease.job_id)
    assert progressed.status == "running" and progressed.skipped_by_reason == {"no_correct_rollout": 1}
    again, created = jobs.create("alice", SPEC, problems=1, jobs_root="/r", idempotency_key="k3", max_active=100)
    assert not created and again.id == made[3].id


def test_redis_down_raises_a_clear_error_without_the_url():
    jobs = JobStore(f"redis://:sekret@127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(JobStoreUnavailable) as info:
        jobs.get("x")
    assert "unavailable" in str(info.value) and "sekret" not in str(info.value)


def test_records_hold_a_token_fingerprint_never_the_token(redis_dir):
    token = "tok-abcdef-123456"
    jobs = _store(redis_dir)
    owner = owner_id(token, deployment_salt(redis_dir.url, "ssb:owner-salt"))
    jobs.create(owner, SPEC, problems=1, jobs_root="/r", idempotency_key="idem", max_active=4)
    import redis

    r = redis.Redis.from_url(redis_dir.url, decode_responses=True)
    dump = " ".join(k + str(r.hgetall(k) if r.type(k) == "hash" else r.dump(k)) for k in r.keys("*"))
    assert token not in dump and owner in dump
