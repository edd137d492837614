"""The curation API: a FastAPI app served as a Ray Serve ingress deployment.

    POST   /v1/curation-jobs                 problems inline, a dataset under the allowed roots, or
                                             synthetic; sampling overrides → 202 + the job
    GET    /v1/curation-jobs/{id}            status, progress counts, timestamps, errors, result
    GET    /v1/curation-jobs/{id}/examples   curated examples, paged; logits by shard location
    DELETE /v1/curation-jobs/{id}            cancel (a running job stops after its current batch)
    POST   /v1/curation-jobs/{id}/resume     requeue a failed or cancelled job (it resumes from its store)
    POST   /v1/curate                        a few problems, answered when curated
    GET    /livez                            liveness: {"status": "ok"}, no token (services.health)
    GET    /readyz                           readiness: 200, or 503 naming the failing checks (Redis, runner,
                                             engine), no token (services.health)
    GET    /healthz                          the older liveness route: {"status": "ok"}, no token; with one,
                                             Redis's state too
    GET    /metrics                          Prometheus
    GET    /openapi.json, /docs              the schema (Swagger UI served locally)
    GET    /ui/...                           the browser's pages (services.ui_routes)
    GET    /ui/jobs/{id}/...                 the inspector over a job's run directory (services.inspector)

Every request but GET /healthz, /livez and /readyz needs `Authorization: Bearer <token>`, unknown
paths included (services.settings.BearerAuth; only the probes' middleware sits outside it);
/docs, /openapi.json and /ui/ also take the session cookie that POST /ui/login sets. Paths in
job records and examples are relative to the jobs root: the server's own layout is not the
client's business. Limits answer with the limit's name: 413 for the body size and problem
counts, 422 for malformed input (FastAPI's own), 429 for too many queued or running jobs of one
token, or too many stored ones. Redis down → 503 with a message; nothing else fails with a 5xx
by design.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.health import HealthRoutes
from services.inspector import build_inspector_router
from services.jobs import JobStore, JobStoreUnavailable, TooManyJobs
from ssb.layout import RunLayout
from services.settings import (BearerAuth, ServiceSettings, bearer_error, deployment_salt, http_routes,
                               owner_id, resolve_under)
from services.ui_routes import UiAuth, ui_router

log = logging.getLogger("ssb.api")

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemIn(_In):
    id: str | None = Field(None, pattern=_ID, description="defaults to inline-<index>")
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, max_length=10_000)
    source: str | None = Field(None, max_length=200)


class DatasetRef(_In):
    path: str = Field(min_length=1, max_length=1000, description="relative to an allowed data root")
    split: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]{1,50}$")
    limit: int | None = Field(None, ge=1)


class SyntheticRef(_In):
    n: int = Field(ge=1)
    seed: int = Field(0, ge=0, le=2**31)
    difficulty: Literal["add1", "addsub", "twostep"] = "add1"


class SamplingOverride(_In):
    n: int | None = Field(None, ge=1, le=64)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)


class JobRequest(_In):
    problems: list[ProblemIn] | None = None
    dataset: DatasetRef | None = None
    synthetic: SyntheticRef | None = None
    rollout: SamplingOverride | None = None
    teacher: SamplingOverride | None = None
    seed: int | None = Field(None, ge=0, le=2**31, description="curate.seed: selection and sampling")

    @model_validator(mode="after")
    def _one_source(self) -> "JobRequest":
        given = [k for k in ("problems", "dataset", "synthetic") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of problems, dataset, synthetic (got {given or 'none'})")
        return self


class Progress(BaseModel):
    rolled_out: int
    verified: int
    kept: int
    skipped: int
    skipped_by_reason: dict[str, int]


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    problems: int
    progress: Progress
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


class CurateOut(BaseModel):
    job: JobOut
    examples: list[dict[str, Any]]


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


def _client_example(row: dict[str, Any], paths: ClientPaths) -> dict[str, Any]:
    logits = row.get("logits")
    if isinstance(logits, dict) and isinstance(logits.get("shard"), str):
        row = {**row, "logits": {**logits, "shard": paths.path(logits["shard"])}}
    return row


def job_out(record: dict[str, Any], paths: ClientPaths) -> JobOut:
    progress = Progress(**{k: record.get(k, 0) for k in ("rolled_out", "verified", "kept", "skipped")},
                        skipped_by_reason=record.get("skipped_by_reason", {}))
    return JobOut(id=record["id"], status=record["status"], problems=record["problems"], progress=progress,
                  created_at=record["created_at"], updated_at=record["updated_at"],
                  started_at=record.get("started_at"), finished_at=record.get("finished_at"),
                  attempts=record["attempts"], cancel_requested=record["cancel_requested"],
                  error=paths.text(record["error"]) if record.get("error") else None,
                  resumable=record["resumable"], result=paths.tree(record.get("result")),
                  load_report=paths.text(record["load_report"]) if record.get("load_report") else None)


class _BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before any of it is parsed."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._reject(send, declared.decode(errors="replace")[:20])
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._reject(send, f"more than {self.limit}")
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Any, size: str) -> None:
        payload = json.dumps({"detail": f"request body is {size} bytes; the limit is "
                                        f"max_request_bytes={self.limit}"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ssb_api_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("ssb_api_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
        self.jobs_created = Counter("ssb_api_jobs_created", "curation jobs created", registry=self.registry)


def _doc(status: int, why: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Detail, "description": why}}


# Every answer a route can give is in the schema, so clients (and the schema-driven tests) can
# rely on it: errors are always {"detail": ...}.
COMMON = {**_doc(400, "the body is not valid JSON"), **_doc(401, "no valid bearer token (all but GET /healthz)"),
          **_doc(503, "the job store (Redis) is unavailable: retry")}
ONE_JOB = _doc(404, "no such job for this token")
SUBMIT = {**_doc(413, "over a size or count limit"), **_doc(429, "too many jobs of this token")}


def create_app(settings: ServiceSettings) -> FastAPI:
    api = settings.api
    j = settings.jobs
    app = FastAPI(title="ssb curation API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Semantic Soft Bootstrapping: curate self-distillation examples over HTTP.",
                  responses=COMMON)
    state: dict[str, Any] = {}
    paths = ClientPaths(j.jobs_root, api.allowed_data_roots)

    def store() -> JobStore:
        if "jobs" not in state:  # built in the replica, never pickled with the app
            state["jobs"] = JobStore.from_config(j)
        return state["jobs"]

    def metrics() -> _Metrics:
        if "metrics" not in state:
            state["metrics"] = _Metrics()
        return state["metrics"]

    def owner_salt() -> bytes:
        if "owner_salt" not in state:
            import redis

            try:
                state["owner_salt"] = deployment_salt(j.redis_url, f"{j.prefix}:owner-salt")
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise JobStoreUnavailable(f"the job store (Redis) is unavailable: {type(exc).__name__}") from None
        return state["owner_salt"]

    def owner(authorization: str | None = Header(None, description="Bearer <token>")) -> str:
        # BearerAuth already refused a bad token; checked again so a route never runs without one.
        error = bearer_error(authorization, api)
        if error is not None:
            raise HTTPException(401, error, headers={"WWW-Authenticate": "Bearer"})
        return owner_id(authorization.partition(" ")[2].strip(), owner_salt())

    # Pages under /ui/ take `Depends(ui.owner)`: the owner behind a bearer token or a browser session.
    ui = UiAuth(api, owner_salt)

    @app.exception_handler(JobStoreUnavailable)
    async def _redis_down(request: Request, exc: JobStoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"{exc}; retry shortly"}, status_code=503, headers={"Retry-After": "2"})

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        m = metrics()
        m.requests.labels(request.method, route, str(response.status_code)).inc()
        m.latency.labels(request.method, route).observe(time.perf_counter() - start)
        return response

    app.add_middleware(_BodyLimit, limit=api.max_request_bytes)
    app.add_middleware(BearerAuth, api=api, open_paths=("/healthz",), session=ui)
    # Added last, so outermost: probes pass no bearer check, body limit or request metrics.
    app.add_middleware(HealthRoutes, jobs=j)

    def _get_own(job_id: str, who: str) -> dict[str, Any]:
        record = store().get(job_id) if len(job_id) <= 64 else None
        if record is None or record.get("owner") != who:  # another token's job does not exist for you
            raise HTTPException(404, f"no job {job_id[:64]!r}")
        return record

    def _examples(record: dict[str, Any], offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        try:
            total, page = read_examples(RunLayout(record["run_dir"]).curated, offset, limit)
        except HTTPException as exc:  # a damaged store's message names its files
            raise HTTPException(exc.status_code, paths.text(str(exc.detail))) from None
        return total, [_client_example(row, paths) for row in page]

    def _spec(body: JobRequest, max_problems: int, limit_name: str) -> tuple[dict[str, Any], int]:
        spec: dict[str, Any] = {"rollout": body.rollout.model_dump() if body.rollout else None,
                                "teacher": body.teacher.model_dump() if body.teacher else None, "seed": body.seed}
        if body.problems is not None:
            if len(body.problems) > max_problems:
                raise HTTPException(413, f"{len(body.problems)} problems; the limit is {limit_name}={max_problems}")
            for i, p in enumerate(body.problems):
                if len(p.question) > api.max_question_chars:
                    raise HTTPException(422, f"problems[{i}].question has {len(p.question)} characters; "
                                             f"the limit is max_question_chars={api.max_question_chars}")
            ids = [p.id for p in body.problems if p.id]
            if len(ids) != len(set(ids)):
                raise HTTPException(422, "problem ids must be unique within a job")
            spec["source"] = {"kind": "inline"}
            spec["problems"] = [p.model_dump(exclude_none=True) for p in body.problems]
            return spec, len(body.problems)
        if body.synthetic is not None:
            if body.synthetic.n > max_problems:
                raise HTTPException(413, f"synthetic.n={body.synthetic.n}; the limit is {limit_name}={max_problems}")
            spec["source"] = {"kind": "synthetic", **body.synthetic.model_dump()}
            return spec, body.synthetic.n
        assert body.dataset is not None
        ref = body.dataset
        if ref.limit is not None and ref.limit > max_problems:
            raise HTTPException(413, f"dataset.limit={ref.limit}; the limit is {limit_name}={max_problems}")
        path = resolve_under(ref.path, api.allowed_data_roots)
        if path is None:
            # Same answer for "outside the roots" and "missing": the API reveals nothing about other paths.
            raise HTTPException(422, "dataset.path must name an existing file or directory inside the allowed "
                                     "data roots (no '..' out of them, no absolute paths elsewhere, no URLs)")
        limit = ref.limit or max_problems
        spec["source"] = {"kind": "dataset", "path": str(path), "split": ref.split, "limit": limit}
        return spec, limit

    def _create(body: JobRequest, who: str, idempotency_key: str | None, max_problems: int,
                limit_name: str) -> dict[str, Any]:
        if idempotency_key is not None and not (1 <= len(idempotency_key) <= 200):
            raise HTTPException(422, "Idempotency-Key must be 1 to 200 characters")
        spec, count = _spec(body, max_problems, limit_name)
        try:
            record, created = store().create(who, spec, problems=count, jobs_root=str(Path(j.jobs_root).resolve()),
                                             idempotency_key=idempotency_key,
                                             max_active=api.max_concurrent_jobs_per_token)
        except TooManyJobs as exc:
            raise HTTPException(429, str(exc)) from None
        if created:
            metrics().jobs_created.inc()
        return record

    # The older liveness route, kept for the clients that use it: probes use /livez and /readyz.
    @app.get("/healthz", tags=["ops"])
    def healthz(authorization: str | None = Header(None)) -> dict[str, Any]:
        if bearer_error(authorization, api) is not None:  # a stranger learns only that this answers
            return {"status": "ok"}
        try:
            redis_ok = store().ping()
        except JobStoreUnavailable:
            redis_ok = False
        return {"status": "ok", "redis": "ok" if redis_ok else "unavailable"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus(_: str = Depends(owner)) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics().registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/curation-jobs", status_code=202, response_model=JobOut, tags=["jobs"],
              responses=SUBMIT)
    def submit(body: JobRequest, response: Response, who: str = Depends(owner),
               idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> JobOut:
        record = _create(body, who, idempotency_key, api.max_problems_per_job, "max_problems_per_job")
        response.headers["Location"] = f"/v1/curation-jobs/{record['id']}"
        return job_out(record, paths)

    @app.get("/v1/curation-jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ONE_JOB)
    def status(job_id: str, who: str = Depends(owner)) -> JobOut:
        return job_out(_get_own(job_id, who), paths)

    @app.delete("/v1/curation-jobs/{job_id}", status_code=202, response_model=JobOut, tags=["jobs"], responses=ONE_JOB)
    def cancel(job_id: str, who: str = Depends(owner)) -> JobOut:
        _get_own(job_id, who)
        store().cancel(job_id)
        return job_out(_get_own(job_id, who), paths)

    @app.post("/v1/curation-jobs/{job_id}/resume", status_code=202, response_model=JobOut, tags=["jobs"],
              responses={**ONE_JOB, **_doc(409, "the job is not failed or cancelled"),
                         **_doc(429, "too many jobs of this token")})
    def resume(job_id: str, who: str = Depends(owner)) -> JobOut:
        record = _get_own(job_id, who)
        if record["status"] not in ("failed", "cancelled"):
            raise HTTPException(409, f"job is {record['status']}; only failed or cancelled jobs resume")
        try:
            store().resume(job_id, api.max_concurrent_jobs_per_token)
        except TooManyJobs as exc:
            raise HTTPException(429, str(exc)) from None
        return job_out(_get_own(job_id, who), paths)

    @app.get("/v1/curation-jobs/{job_id}/examples", response_model=ExamplesOut, tags=["jobs"],
              responses={**ONE_JOB, **_doc(409, "the job's store is damaged")})
    def examples(job_id: str, offset: int = Query(0, ge=0, le=10**9),
                 limit: int = Query(20, ge=1, le=10**6), who: str = Depends(owner)) -> ExamplesOut:
        record = _get_own(job_id, who)
        limit = min(limit, api.max_page_size)
        total, page = _examples(record, offset, limit)
        next_offset = offset + len(page) if offset + len(page) < total else None
        return ExamplesOut(job_id=job_id, total=total, offset=offset, limit=limit, next_offset=next_offset,
                           examples=page)

    @app.post("/v1/curate", response_model=CurateOut, tags=["jobs"],
              responses={**SUBMIT, 202: {"model": CurateOut, "description": "not finished in time: poll the job"}})
    def curate(body: JobRequest, response: Response, who: str = Depends(owner),
               idempotency_key: str | None = Header(None, alias="Idempotency-Key")) -> CurateOut:
        record = _create(body, who, idempotency_key, api.max_sync_problems, "max_sync_problems")
        deadline = time.monotonic() + api.sync_timeout_s
        while record["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            record = _get_own(record["id"], who)
        if record["status"] != "succeeded":
            response.status_code = 202 if record["status"] in ("queued", "running") else 200
            return CurateOut(job=job_out(record, paths), examples=[])
        _, page = _examples(record, 0, api.max_sync_problems)
        return CurateOut(job=job_out(record, paths), examples=page)

    app.include_router(ui_router(api, ui, store, app.openapi, title=app.title))

    def job_run_dir(job_id: str, who: str = Depends(ui.owner)) -> Path:
        return Path(_get_own(job_id, who)["run_dir"])  # another token's job: 404, as in the job API

    # The inspector's pages over each job's run directory, the same pages as `ssb inspect`.
    app.include_router(build_inspector_router(job_run_dir, redact=paths.text), prefix="/ui/jobs/{job_id}",
                       include_in_schema=False)
    return app


EXAMPLE_COLUMNS = ["problem_id", "question", "answer", "response_text", "num_tokens", "correct_rollout",
                   "incorrect_rollout", "incorrect_answer"]


def read_examples(store_dir: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(total rows, one page): text fields inline; top-k logits by shard file and row.
    A malformed manifest or a shard whose bytes differ from it answers 409 naming them:
    the job's results are damaged, and serving them unchecked would pass the damage on."""
    from ssb.store import ChecksumError, LogitStore, ManifestError, StoreError

    try:
        store = LogitStore.open(store_dir, allow_empty=True)
    except ManifestError as exc:
        raise HTTPException(409, f"the job's store is damaged: {exc}") from None
    except StoreError:
        return 0, []  # no shard committed yet
    shards = store.shards()
    total = sum(shard.rows for shard in shards)
    page: list[dict[str, Any]] = []
    start = 0
    for shard in shards:
        end = start + shard.rows
        if end > offset and len(page) < limit:
            first = max(0, offset - start)
            take = min(shard.rows - first, limit - len(page))
            try:
                table = shard.read_table(EXAMPLE_COLUMNS).slice(first, take)
            except ChecksumError as exc:
                raise HTTPException(409, f"the job's store is damaged: {exc}") from None
            for i, row in enumerate(table.to_pylist()):
                row["logits"] = {"shard": f"{store.uri}/{shard.name}", "row": first + i,
                                 "sha256": shard.entry["sha256"], "top_k": store.manifest["top_k"],
                                 "columns": ["topk_ids", "topk_logprobs", "tail_logprob"]}
                page.append(row)
        start = end
    return total, page


def build_api_deployment(settings: ServiceSettings) -> Any:
    """The FastAPI app as a Serve ingress deployment class (bind it to run it)."""
    from ray import serve

    from pipelines.engine import control_actor_options

    app = create_app(settings)

    @serve.deployment(name="CurationAPI", num_replicas=settings.api.api_replicas,
                      ray_actor_options=control_actor_options(settings.run.engine), max_ongoing_requests=256)
    @serve.ingress(app)
    class CurationAPI:
        def __init__(self, runner: Any = None):
            # Bound so the runner deploys (and is upgraded) with the API; jobs reach it via Redis.
            self.runner = runner

        http_routes = http_routes

    return CurationAPI
