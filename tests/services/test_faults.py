"""Faults under the running service: a killed API replica, a killed runner and a Redis outage
longer than the runner's lease lose no job and store no problem twice.

Every fault is triggered by the job's progress as Redis records it (claimed, first batch
committed), never by a sleep, and the job's record is read straight from Redis at the moment
of the fault to show that it was still running then."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.job_record import TERMINAL, JobRecord
from ssb.store import LogitStore
from tests.services.conftest import EQUAL_N, tiny_job

pytestmark = pytest.mark.slow

# The problems the reference run curates: EQUAL_N of them, two batches of engine.batch_size.
DATASET_JOB = {"dataset": {"path": "problems.jsonl"}, "seed": 7, "rollout": {"n": 2, "max_tokens": 24},
               "teacher": {"n": 1, "max_tokens": 32}}


def _jobs(service) -> Any:
    from services.jobs import JobStore

    return JobStore.from_config(service.settings.jobs)


def _kill_replicas(deployment: str, app: str = "ssb") -> int:
    import ray

    killed = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"::{app}#{deployment}#" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)
            killed += 1
    return killed


def _wait_record(jobs: Any, job_id: str, predicate, what: str, timeout: float = 600) -> JobRecord:
    """Polls the job's record in Redis (not the API: it may be the thing that is down)."""
    deadline = time.monotonic() + timeout
    while True:
        record = jobs.get(job_id)
        if record is not None and predicate(record):
            return record
        assert record is None or record.status not in TERMINAL, f"job ended before {what}: {record}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {record}"
        time.sleep(0.05)


def _committed(record: JobRecord) -> int:
    return record.kept + record.skipped


def _wait_api_back(service, timeout: float = 300) -> None:
    """Until the API answers again; refused connections and the proxy's 503 count only until then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with service.client(timeout=10) as c:
                if c.get("/healthz").status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not come back")


def _finished(service, job_id: str, timeout: float = 900) -> dict[str, Any]:
    """Polls through the API, which must answer 200 on every request now that it is up."""
    deadline = time.monotonic() + timeout
    with service.client() as c:
        while True:
            r = c.get(f"/v1/curation-jobs/{job_id}")
            assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
            if r.json()["status"] in TERMINAL:
                return r.json()
            assert time.monotonic() < deadline, f"job {job_id} did not finish: {r.json()}"
            time.sleep(0.5)


def _store_ids(service, done: dict[str, Any]) -> list[str]:
    """Every problem id the job's store committed, kept or skipped, with repeats."""
    store_dir = Path(done["result"]["store"])
    if not store_dir.is_absolute():  # the API shows paths under the jobs root only
        store_dir = Path(service.settings.jobs.jobs_root) / store_dir
    store = LogitStore.open(str(store_dir), allow_empty=True)
    store.verify()
    return [pid for entry in store.manifest["shards"] for pid in (*entry["problem_ids"], *entry["skipped"])]


def test_killing_the_api_replica_mid_job_loses_nothing(service):
    jobs = _jobs(service)
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=DATASET_JOB).json()
    _wait_record(jobs, job["id"], lambda r: r.status == "running", "the job to be claimed")
    assert _kill_replicas("CurationAPI") >= 1
    at_kill = jobs.get(job["id"])
    assert at_kill.status == "running" and _committed(at_kill) < EQUAL_N, at_kill

    _wait_api_back(service)
    done = _finished(service, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1, "the runner lost the job although only the API died"
    ids = _store_ids(service, done)
    assert len(ids) == len(set(ids)) == EQUAL_N, "a problem was lost or stored twice"


def test_killing_the_runner_mid_job_resumes_it_and_stores_each_problem_once(service):
    jobs = _jobs(service)
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=DATASET_JOB).json()
    # After the first batch's commit and before the second's: the kill lands mid-job.
    _wait_record(jobs, job["id"], lambda r: r.status == "running" and _committed(r) > 0,
                 "the first committed batch")
    assert _kill_replicas("CurationRunner") >= 1
    at_kill = jobs.get(job["id"])
    assert at_kill.status == "running" and 0 < _committed(at_kill) < EQUAL_N, at_kill

    done = _finished(service, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2  # it was picked up again after the runner died
    assert done["result"]["already_done"] >= _committed(at_kill)  # resumed from its store
    ids = _store_ids(service, done)
    assert len(ids) == len(set(ids)) == EQUAL_N, "a problem was lost or stored twice"


def test_a_redis_outage_longer_than_the_lease_loses_no_job_and_runs_each_once(service):
    """Redis is SIGKILLed while a job runs and others wait, and stays down past the runner's
    poll interval and its lease; restarted from its append-only file, the runner recovers by
    itself (nobody cancels anything) and every job ends once, its problems stored once."""
    jobs, j = _jobs(service), service.settings.jobs
    with service.client() as c:
        made = [c.post("/v1/curation-jobs", json=tiny_job(), headers={"Idempotency-Key": f"outage-{i}"}).json()
                for i in range(4)]
    running = _wait_record(jobs, made[0]["id"], lambda r: r.status == "running", "the first job to be claimed")
    queued_at_outage = {m["id"] for m in made if jobs.get(m["id"]).status == "queued"}
    service.redis.stop(kill=True)  # SIGKILL: only the append-only file survives
    outage = max(1.5 * j.lease_s, 4 * j.poll_s)
    try:
        down_until = time.monotonic() + outage
        with service.client() as c:
            r = c.get(f"/v1/curation-jobs/{made[0]['id']}")
            assert r.status_code == 503 and "job store (Redis) is unavailable" in r.json()["detail"]
            r = c.post("/v1/curation-jobs", json=tiny_job())
            assert r.status_code == 503 and "retry" in r.json()["detail"]
            health = c.get("/healthz")
            assert health.status_code == 200 and health.json()["redis"] == "unavailable"
        time.sleep(max(0.0, down_until - time.monotonic()))  # the outage itself: the lease runs out
    finally:
        service.redis.start()

    with service.client() as c:
        for job in made:  # the records survived the restart as they were created
            r = c.get(f"/v1/curation-jobs/{job['id']}")
            assert r.status_code == 200 and r.json()["created_at"] == job["created_at"]
        again = c.post("/v1/curation-jobs", json=tiny_job(), headers={"Idempotency-Key": "outage-2"})
        assert again.json()["id"] == made[2]["id"]
    finals = {job["id"]: _finished(service, job["id"]) for job in made}
    assert all(f["status"] == "succeeded" for f in finals.values()), finals
    for job_id, final in finals.items():
        ids = _store_ids(service, final)
        assert len(ids) == len(set(ids)) == 2, f"job {job_id}: a problem lost or stored twice: {ids}"
        if job_id in queued_at_outage:
            assert final["attempts"] == 1, f"job {job_id}, queued during the outage, was claimed twice"
    # The job the outage interrupted was given up by its runner (its lease ran out) and claimed again.
    assert finals[running.id]["attempts"] <= 2
    import redis

    r = redis.Redis.from_url(j.redis_url, decode_responses=True)  # no job of these is left queued or running
    assert not {m["id"] for m in made} & set(r.lrange(f"{j.prefix}:queue", 0, -1))
    assert not {m["id"] for m in made} & set(r.zrange(f"{j.prefix}:running", 0, -1))
