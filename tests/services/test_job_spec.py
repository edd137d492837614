"""A job request becomes a job spec, and a spec a run config, without an app: each limit rule
answers with its HTTP status and names the limit; dotted overrides are read by the CLI's own
parser and limited to what the request's fields may set. Also the job record's Redis form.
Pure: no Ray, no Redis, no HTTP."""

from __future__ import annotations

import json

import pytest

from services.job_record import TERMINAL, JobRecord, JobStatus
from services.job_run import job_config
from services.job_spec import (OVERRIDABLE, JobRequest, JobSpec, ProblemLimit, SpecError, check_overrides,
                               spec_from_request)
from services.settings import ApiConfig, ServiceSettings
from ssb.config import OverrideError, load_config

LIMIT = ProblemLimit("max_problems_per_job", 3)
BAD_OVERRIDES = ["curate.rollout.temperature=!!python/object/apply:os.system [ls]", "curate..x=1", "curaterollout"]


def _request(**body) -> JobRequest:
    return JobRequest.model_validate(body)


def _refused(body: dict, api: ApiConfig | None = None, limit: ProblemLimit = LIMIT) -> SpecError:
    with pytest.raises(SpecError) as caught:
        spec_from_request(_request(**body), api or ApiConfig(), limit)
    return caught.value


def _problems(n: int, **extra) -> list[dict]:
    return [{"id": f"p{i}", "question": "What is 1 + 1?", "answer": "2", **extra} for i in range(n)]


def test_inline_problems_become_an_inline_spec_with_the_sampling_fields():
    spec, count = spec_from_request(_request(problems=_problems(2), rollout={"n": 2}, seed=5), ApiConfig(), LIMIT)
    assert count == 2 and spec.source.kind == "inline" and [p["id"] for p in spec.problems] == ["p0", "p1"]
    assert spec.rollout.n == 2 and spec.teacher is None and spec.seed == 5 and spec.overrides == []
    assert JobSpec.model_validate(json.loads(json.dumps(spec.to_record()))) == spec  # as the record keeps it


@pytest.mark.parametrize("body, status, needle", [
    ({"problems": _problems(4)}, 413, "4 problems; the limit is max_problems_per_job=3"),
    ({"synthetic": {"n": 4}}, 413, "synthetic.n=4; the limit is max_problems_per_job=3"),
    ({"dataset": {"path": "x.jsonl", "limit": 4}}, 413, "dataset.limit=4; the limit is max_problems_per_job=3"),
    ({"problems": [{"question": "q" * 4001, "answer": "1"}]}, 422,
     "problems[0].question has 4001 characters; the limit is max_question_chars=4000"),
    ({"problems": _problems(1) * 2}, 422, "problem ids must be unique within a job"),
    ({"dataset": {"path": "../etc/passwd"}}, 422, "inside the allowed data roots"),
])
def test_each_limit_rule_answers_its_status_and_names_the_limit(body, status, needle):
    error = _refused(body)
    assert error.status == status and needle in str(error)


def test_the_sync_limit_is_named_when_it_is_the_one_that_applies():
    error = _refused({"synthetic": {"n": 3}}, limit=ProblemLimit("max_sync_problems", 2))
    assert error.status == 413 and "the limit is max_sync_problems=2" in str(error)


def test_a_dataset_resolves_inside_its_root_and_its_limit_bounds_the_count(tmp_path):
    (tmp_path / "data.jsonl").write_text("")
    api = ApiConfig(allowed_data_roots=[str(tmp_path)])
    spec, count = spec_from_request(_request(dataset={"path": "data.jsonl", "split": "test"}), api, LIMIT)
    assert (spec.source.kind, spec.source.path, spec.source.split, spec.source.limit, count) == (
        "dataset", str(tmp_path / "data.jsonl"), "test", 3, 3)
    assert _refused({"dataset": {"path": "missing.jsonl"}}, api).status == 422


@pytest.mark.parametrize("override", BAD_OVERRIDES)
def test_a_malformed_override_is_422_with_the_clis_own_message(override):
    with pytest.raises(OverrideError) as cli:  # what `ssb run ... OVERRIDE` reads it with
        load_config(None, [override])
    error = _refused({"synthetic": {"n": 1}, "overrides": [override]})
    assert error.status == 422 and str(error) == str(cli.value) and "\n" not in str(error)


@pytest.mark.parametrize("override", ["model.name=other", "data.source=/etc/passwd", "curate.rollout=1",
                                      "jobs.jobs_root=/", "curate.keep_incorrect=true"])
def test_an_override_outside_the_allowlist_is_422_naming_what_may_be_set(override):
    error = _refused({"synthetic": {"n": 1}, "overrides": [override]})
    key = override.split("=")[0]
    assert error.status == 422 and repr(key) in str(error) and "curate.rollout.temperature" in str(error)


@pytest.mark.parametrize("override, needle", [("curate.rollout.n=65", "less than or equal to 64"),
                                              ("curate.teacher.temperature=hot", "valid number"),
                                              ("curate.rollout.top_p=0", "greater than 0"),
                                              ("curate.seed=-1", "greater than or equal to 0")])
def test_an_override_keeps_the_bounds_of_the_field_it_stands_for(override, needle):
    error = _refused({"synthetic": {"n": 1}, "overrides": [override]})
    assert error.status == 422 and str(error).startswith(f"override {override!r}: ") and needle in str(error)


def test_overrides_apply_after_the_fields_in_the_jobs_run_config(tmp_path):
    overrides = ["curate.rollout.temperature=0.7", "curate.teacher.max_tokens=33", "curate.seed=11"]
    spec, _ = spec_from_request(_request(synthetic={"n": 2}, rollout={"temperature": 0.2, "n": 3}, seed=4,
                                         overrides=overrides), ApiConfig(), LIMIT)
    assert spec.overrides == overrides and set(k.split("=")[0] for k in overrides) <= set(OVERRIDABLE)
    settings = ServiceSettings()
    cfg = job_config(settings, spec, str(tmp_path / "job"))
    default = settings.run.curate
    assert (cfg.curate.rollout.temperature, cfg.curate.rollout.n, cfg.curate.seed) == (0.7, 3, 11)
    assert cfg.curate.teacher.max_tokens == 33 and cfg.curate.teacher.temperature == default.teacher.temperature
    assert (cfg.data.source, cfg.data.synthetic.n, cfg.run_dir) == ("synthetic", 2, str(tmp_path / "job"))


def test_check_overrides_passes_good_ones_through_unchanged():
    assert check_overrides(["curate.rollout.n=2", "curate.seed=0"]) == ["curate.rollout.n=2", "curate.seed=0"]


def test_a_job_record_round_trips_through_its_redis_hash():
    record = JobRecord(id="a" * 32, owner="o", status=JobStatus.QUEUED, created_at="t0", updated_at="t0",
                       spec={"source": {"kind": "synthetic", "n": 1}}, problems=1, run_dir="/r/x",
                       skipped_by_reason={"no_correct_rollout": 2}, skipped=2)
    raw = record.to_redis()
    assert raw["status"] == "queued" and raw["spec"] == json.dumps(record.spec) and raw["skipped:no_correct_rollout"] == "2"
    assert all(isinstance(v, str) for v in raw.values())
    assert JobRecord.from_redis(raw) == record
    ended = JobRecord.from_redis({**raw, "status": "failed", "resumable": "1", "result": '{"rows": 1}'})
    assert ended.status is JobStatus.FAILED and ended.status in TERMINAL and ended.resumable and ended.result == {"rows": 1}
    assert f"job is {ended.status}" == "job is failed"  # messages show the stored word


def test_a_requests_budget_is_capped_limit_by_limit_by_the_servers() -> None:
    from ssb.config import BudgetConfig

    api = ApiConfig(job_budget_cap=BudgetConfig(max_kept=10, max_wall_seconds=60))
    body = JobRequest.model_validate({"synthetic": {"n": 2}, "budget": {"max_kept": 50, "max_tokens": 1000}})
    spec, _ = spec_from_request(body, api, LIMIT)
    assert spec.budget == BudgetConfig(max_kept=10, max_tokens=1000, max_wall_seconds=60)
    unasked, _ = spec_from_request(JobRequest.model_validate({"synthetic": {"n": 2}}), api, LIMIT)
    assert unasked.budget == BudgetConfig(max_kept=10, max_wall_seconds=60)
    free, _ = spec_from_request(JobRequest.model_validate({"synthetic": {"n": 2}}), ApiConfig(), LIMIT)
    assert free.budget is None
    with pytest.raises(ValueError, match="max_kept"):
        JobRequest.model_validate({"synthetic": {"n": 2}, "budget": {"max_kept": 0}})
