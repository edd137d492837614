"""Faults under the running service: killed replicas and a killed Redis lose no job (issue 7)."""

from __future__ import annotations

import time

import httpx
import pytest

from ssb.store import LogitStore
from tests.services.conftest import tiny_job

pytestmark = pytest.mark.slow


def _kill_replicas(deployment: str, app: str = "ssb") -> int:
    import ray

    killed = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and f"::{app}#{deployment}#" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)
            killed += 1
    return killed


def _poll(service, job_id: str, timeout: float = 900) -> dict:
    """Polls through a replica restart: connection errors and 5xx are retried, never a lost job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with service.client(timeout=10) as c:
                r = c.get(f"/v1/curation-jobs/{job_id}")
            if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed", "cancelled"):
                return r.json()
            assert r.status_code in (200, 500, 502, 503, 504), r.text
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def _wait_running(service, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with service.client() as c:
        while c.get(f"/v1/curation-jobs/{job_id}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_killing_the_api_replica_mid_job_loses_nothing(service):
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=tiny_job()).json()
    _wait_running(service, job["id"])
    assert _kill_replicas("CurationAPI") >= 1
    done = _poll(service, job["id"])
    assert done["status"] == "succeeded" and done["progress"]["kept"] + done["progress"]["skipped"] == 2


def test_killing_the_runner_mid_job_resumes_it_and_stores_each_problem_once(service):
    body = {"dataset": {"path": "problems.jsonl"}, "seed": 7, "rollout": {"n": 2, "max_tokens": 24},
            "teacher": {"n": 1, "max_tokens": 32}}
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=body).json()
    _wait_running(service, job["id"])
    time.sleep(2)  # into the first batch
    assert _kill_replicas("CurationRunner") >= 1
    done = _poll(service, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2  # it was picked up again after the runner died
    store = LogitStore.open(done["result"]["store"], allow_empty=True)
    store.verify()
    kept = [pid for entry in store.manifest["shards"] for pid in entry["problem_ids"]]
    done_ids = kept + [pid for entry in store.manifest["shards"] for pid in entry["skipped"]]
    assert len(done_ids) == len(set(done_ids)) == 8, "a problem was lost or stored twice"


def test_redis_down_is_503_with_a_message_and_a_restart_loses_no_job(service):
    with service.client() as c:
        made = [c.post("/v1/curation-jobs", json=tiny_job(), headers={"Idempotency-Key": f"crash-{i}"}).json()
                for i in range(5)]
        service.redis.stop(kill=True)  # SIGKILL: only the append-only file survives
        try:
            r = c.get(f"/v1/curation-jobs/{made[0]['id']}")
            assert r.status_code == 503 and "job store (Redis) is unavailable" in r.json()["detail"]
            r = c.post("/v1/curation-jobs", json=tiny_job())
            assert r.status_code == 503 and "retry" in r.json()["detail"]
            health = c.get("/healthz")
            assert health.status_code == 200 and health.json()["redis"] == "unavailable"
        finally:
            service.redis.start()
        for job in made:
            r = c.get(f"/v1/curation-jobs/{job['id']}")
            assert r.status_code == 200 and r.json()["created_at"] == job["created_at"]
        again = c.post("/v1/curation-jobs", json=tiny_job(), headers={"Idempotency-Key": "crash-2"})
        assert again.json()["id"] == made[2]["id"]
        for job in made:
            c.delete(f"/v1/curation-jobs/{job['id']}")
        for job in made:  # the runner, which retried through the outage, still finishes or cancels each
            assert service.wait(job["id"])["status"] in ("succeeded", "cancelled")
