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
paths included (services.auth.BearerAuth; only the probes' middleware sits outside it);
/docs, /openapi.json and /ui/ also take the session cookie that POST /ui/login sets. Paths in
job records and examples are relative to the jobs root: the server's own layout is not the
client's business. Limits answer with the limit's name: 413 for the body size and problem
counts, 422 for malformed input (FastAPI's own), 429 for too many queued or running jobs of one
token, or too many stored ones. Redis down → 503 with a message; nothing else fails with a 5xx
by design.

The routes live in routers of their own (services.routes_jobs, services.routes_ops,
services.ui_routes, services.inspector); requests become job specs in services.job_spec.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services import routes_jobs, routes_ops
from services.api_context import ApiContext, job_run_dir
from services.api_middleware import BodyLimit, count_requests, redis_down
from services.api_models import COMMON
from services.auth import BearerAuth
from services.health import HealthRoutes
from services.inspector import build_inspector_router
from services.jobs import JobStoreUnavailable
from services.settings import ServiceSettings, http_routes
from services.ui_routes import ui_router


def create_app(settings: ServiceSettings) -> FastAPI:
    api = settings.api
    app = FastAPI(title="ssb curation API", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Semantic Soft Bootstrapping: curate self-distillation examples over HTTP.",
                  responses=COMMON)
    ctx = app.state.api = ApiContext(settings)
    app.add_exception_handler(JobStoreUnavailable, redis_down)
    app.middleware("http")(count_requests)
    app.add_middleware(BodyLimit, limit=api.max_request_bytes)
    app.add_middleware(BearerAuth, api=api, open_paths=("/healthz",), session=ctx.ui)
    # Added last, so outermost: probes pass no bearer check, body limit or request metrics.
    app.add_middleware(HealthRoutes, jobs=settings.jobs)
    app.include_router(routes_ops.router)
    app.include_router(routes_jobs.router)
    app.include_router(ui_router(api, ctx.ui, ctx.store, app.openapi, title=app.title))
    # The inspector's pages over each job's run directory, the same pages as `ssb inspect`.
    app.include_router(build_inspector_router(job_run_dir, redact=ctx.paths.text), prefix="/ui/jobs/{job_id}",
                       include_in_schema=False)
    return app


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
