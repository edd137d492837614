"""Limits and bad input: each answered with the right status and a message naming the limit."""

from __future__ import annotations

import os

import pytest

from tests.services.conftest import tiny_job

pytestmark = pytest.mark.slow

# Which routes need the token: tests/services/test_auth.py, over the running apps' own routes.


def test_docs_metrics_and_schema_are_served_with_the_token(service):
    with service.client() as c:
        schema = c.get("/openapi.json").json()
        assert {"/v1/curation-jobs", "/v1/curation-jobs/{job_id}", "/v1/curation-jobs/{job_id}/examples",
                "/v1/curate", "/healthz", "/metrics"} <= set(schema["paths"])
        assert "swagger" in c.get("/docs").text.lower()
        c.get("/v1/curation-jobs/nope")
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "ssb_api_requests_total" in metrics.text


def test_a_body_over_the_size_limit_is_413_naming_the_limit(service):
    limit = service.settings.api.max_request_bytes
    with service.client() as c:
        big = tiny_job()
        big["problems"][0]["question"] = "x" * (limit + 10)
        r = c.post("/v1/curation-jobs", json=big)
        assert r.status_code == 413 and f"max_request_bytes={limit}" in r.json()["detail"]


def test_too_many_problems_is_413_naming_the_limit(service):
    limit = service.settings.api.max_problems_per_job
    problems = [{"id": f"p{i}", "question": "What is 1 + 1?", "answer": "2"} for i in range(limit + 1)]
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json={"problems": problems})
        assert r.status_code == 413 and f"max_problems_per_job={limit}" in r.json()["detail"]
        r = c.post("/v1/curation-jobs", json={"synthetic": {"n": limit + 1}})
        assert r.status_code == 413 and f"max_problems_per_job={limit}" in r.json()["detail"]
        sync = service.settings.api.max_sync_problems
        r = c.post("/v1/curate", json={"synthetic": {"n": sync + 1}})
        assert r.status_code == 413 and f"max_sync_problems={sync}" in r.json()["detail"]


def test_a_question_over_the_length_limit_is_422_naming_the_limit(service):
    limit = service.settings.api.max_question_chars
    body = tiny_job()
    body["problems"][1]["question"] = "y" * (limit + 1)
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json=body)
        assert r.status_code == 422 and f"max_question_chars={limit}" in r.json()["detail"]


@pytest.mark.parametrize("body, needle", [
    ({}, "exactly one of problems, dataset, synthetic"),
    ({"problems": [{"question": "q"}]}, "answer"),
    ({"synthetic": {"n": 2}, "rollout": {"temperature": 9}}, "temperature"),
    ({"synthetic": {"n": 2}, "unknown": 1}, "unknown"),
    ({"synthetic": {"n": 2}, "dataset": {"path": "problems.jsonl"}}, "exactly one"),
])
def test_malformed_requests_are_422_with_the_field_named(service, body, needle):
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json=body)
        assert r.status_code == 422 and needle in r.text


def test_malformed_json_is_422_not_500(service):
    with service.client() as c:
        r = c.post("/v1/curation-jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422


@pytest.mark.parametrize("path", ["../problems.jsonl", "/etc/passwd", "sub/../../etc/passwd", "%2e%2e/x",
                                  "sub/../../" + "a" * 10, "file:///etc/passwd", "s3://bucket/x.jsonl",
                                  "link-out/passwd", "missing.jsonl"])
def test_dataset_references_cannot_leave_the_allowed_roots(service, path):
    link = service.data_root / "link-out"
    if not link.exists():
        os.symlink("/etc", link)
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json={"dataset": {"path": path}})
        assert r.status_code == 422 and "allowed data roots" in r.json()["detail"]


def test_a_dataset_inside_the_roots_is_accepted(service):
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json={"dataset": {"path": "sub/small.jsonl"}})
        assert r.status_code == 202
        c.delete(f"/v1/curation-jobs/{r.json()['id']}")


def test_unknown_jobs_are_404(service):
    with service.client() as c:
        assert c.get("/v1/curation-jobs/does-not-exist").status_code == 404
        assert c.get("/v1/curation-jobs/" + "z" * 500).status_code == 404


# Dotted overrides over HTTP, on the API alone (no runner: a job that is accepted stays queued).
BAD_OVERRIDES = ["curate.rollout.temperature=!!python/object/apply:os.system [ls]", "curate..x=1", "curaterollout"]


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_a_malformed_override_is_422_with_the_line_ssb_run_prints(api_only, override, capsys):
    from cluster.cli import main

    assert main(["run", override]) == 2  # refused before anything starts
    printed = capsys.readouterr().err.strip()
    with api_only.client() as c:
        r = c.post("/v1/curation-jobs", json={"synthetic": {"n": 1}, "overrides": [override]})
    assert r.status_code == 422 and printed == f"ssb run: {r.json()['detail']}", (printed, r.text)


def test_an_override_outside_the_allowlist_is_422_and_queues_nothing(api_only):
    from services.jobs import JobStore

    jobs = JobStore.from_config(api_only.settings.jobs)
    before = jobs.queue_length()
    with api_only.client() as c:
        for override in ("model.name=other", "data.source=/etc/passwd", "curate.rollout.n=65"):
            r = c.post("/v1/curation-jobs", json={"synthetic": {"n": 1}, "overrides": [override]})
            assert r.status_code == 422 and f"override '{override.split('=')[0]}" in r.json()["detail"], r.text
    assert jobs.queue_length() == before


def test_allowed_overrides_are_kept_in_the_jobs_spec_for_the_runner(api_only):
    from services.jobs import JobStore

    overrides = ["curate.rollout.temperature=0.7", "curate.teacher.max_tokens=40", "curate.seed=9"]
    with api_only.client() as c:
        r = c.post("/v1/curation-jobs", json={"synthetic": {"n": 1}, "overrides": overrides})
        assert r.status_code == 202, r.text
        record = JobStore.from_config(api_only.settings.jobs).get(r.json()["id"])
        assert record.spec["overrides"] == overrides and record.status == "queued"
        c.delete(f"/v1/curation-jobs/{record.id}")
