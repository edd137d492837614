"""The job routes of the curation API: submit, status, cancel, resume, examples, and the
synchronous POST /v1/curate. Each route reads the app's ApiContext (services.api_context);
turning a request into a job is services.job_spec's pure `spec_from_request`."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response

from services.api_context import ApiContext, Ctx, Owner
from services.api_models import ONE_JOB, SUBMIT, CurateOut, ExamplesOut, JobOut, doc, job_out
from services.job_record import RESUMABLE, TERMINAL, JobRecord, JobStatus
from services.job_spec import JobRequest, ProblemLimit, SpecError, spec_from_request
from services.jobs import TooManyJobs

router = APIRouter(tags=["jobs"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def create_job(ctx: ApiContext, body: JobRequest, who: str, idempotency_key: str | None,
               limit: ProblemLimit) -> JobRecord:
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 200):
        raise HTTPException(422, "Idempotency-Key must be 1 to 200 characters")
    try:
        spec, count = spec_from_request(body, ctx.api, limit)
    except SpecError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    try:
        record, created = ctx.store().create(who, spec.to_record(), problems=count, jobs_root=ctx.jobs_root,
                                             idempotency_key=idempotency_key,
                                             max_active=ctx.api.max_concurrent_jobs_per_token)
    except TooManyJobs as exc:
        raise HTTPException(429, str(exc)) from None
    if created:
        ctx.metrics().jobs_created.inc()
    return record


@router.post("/v1/curation-jobs", status_code=202, response_model=JobOut, responses=SUBMIT)
def submit(body: JobRequest, response: Response, ctx: Ctx, who: Owner,
           idempotency_key: IdempotencyKey = None) -> JobOut:
    limit = ProblemLimit("max_problems_per_job", ctx.api.max_problems_per_job)
    record = create_job(ctx, body, who, idempotency_key, limit)
    response.headers["Location"] = f"/v1/curation-jobs/{record.id}"
    return job_out(record, ctx.paths)


@router.get("/v1/curation-jobs/{job_id}", response_model=JobOut, responses=ONE_JOB)
def status(job_id: str, ctx: Ctx, who: Owner) -> JobOut:
    return job_out(ctx.own_job(job_id, who), ctx.paths)


@router.delete("/v1/curation-jobs/{job_id}", status_code=202, response_model=JobOut, responses=ONE_JOB)
def cancel(job_id: str, ctx: Ctx, who: Owner) -> JobOut:
    ctx.own_job(job_id, who)
    ctx.store().cancel(job_id)
    return job_out(ctx.own_job(job_id, who), ctx.paths)


@router.post("/v1/curation-jobs/{job_id}/resume", status_code=202, response_model=JobOut,
             responses={**ONE_JOB, **doc(409, "the job is not failed or cancelled"),
                        **doc(429, "too many jobs of this token")})
def resume(job_id: str, ctx: Ctx, who: Owner) -> JobOut:
    record = ctx.own_job(job_id, who)
    if record.status not in RESUMABLE:
        raise HTTPException(409, f"job is {record.status}; only failed or cancelled jobs resume")
    try:
        ctx.store().resume(job_id, ctx.api.max_concurrent_jobs_per_token)
    except TooManyJobs as exc:
        raise HTTPException(429, str(exc)) from None
    return job_out(ctx.own_job(job_id, who), ctx.paths)


@router.get("/v1/curation-jobs/{job_id}/examples", response_model=ExamplesOut,
            responses={**ONE_JOB, **doc(409, "the job's store is damaged")})
def examples(job_id: str, ctx: Ctx, who: Owner, offset: int = Query(0, ge=0, le=10**9),
             limit: int = Query(20, ge=1, le=10**6)) -> ExamplesOut:
    record = ctx.own_job(job_id, who)
    limit = min(limit, ctx.api.max_page_size)
    total, page = ctx.examples(record, offset, limit)
    next_offset = offset + len(page) if offset + len(page) < total else None
    return ExamplesOut(job_id=job_id, total=total, offset=offset, limit=limit, next_offset=next_offset,
                       examples=page)


@router.post("/v1/curate", response_model=CurateOut,
             responses={**SUBMIT, 202: {"model": CurateOut, "description": "not finished in time: poll the job"}})
def curate(body: JobRequest, response: Response, ctx: Ctx, who: Owner,
           idempotency_key: IdempotencyKey = None) -> CurateOut:
    api = ctx.api
    record = create_job(ctx, body, who, idempotency_key, ProblemLimit("max_sync_problems", api.max_sync_problems))
    deadline = time.monotonic() + api.sync_timeout_s
    while record.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        record = ctx.own_job(record.id, who)
    if record.status != JobStatus.SUCCEEDED:
        response.status_code = 202 if record.status in (JobStatus.QUEUED, JobStatus.RUNNING) else 200
        return CurateOut(job=job_out(record, ctx.paths), examples=[])
    _, page = ctx.examples(record, 0, api.max_sync_problems)
    return CurateOut(job=job_out(record, ctx.paths), examples=page)
