"""What the curation API's routes share, one per app (`app.state.api`), and the dependencies
that hand it and the caller's identity to a route.

The job store, the metrics registry and the owner salt are made on first use, in the replica:
the app is pickled into Serve's replicas before any request, and none of them pickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from services.api_middleware import Metrics
from services.api_models import ClientPaths
from services.auth import bearer_error, bearer_token, deployment_salt, owner_id
from services.examples import read_examples
from services.job_record import JobRecord
from services.jobs import JobStore, JobStoreUnavailable
from services.settings import ServiceSettings
from services.ui_routes import UiAuth
from ssb.layout import RunLayout


class ApiContext:
    def __init__(self, settings: ServiceSettings):
        self.api, self.jobs_config = settings.api, settings.jobs
        self.jobs_root = str(Path(self.jobs_config.jobs_root).resolve())
        self.paths = ClientPaths(self.jobs_config.jobs_root, self.api.allowed_data_roots)
        # Pages under /ui/ take `Depends(ui_owner)`: the owner behind a bearer token or a browser session.
        self.ui = UiAuth(self.api, self.owner_salt)
        self._store: JobStore | None = None
        self._metrics: Metrics | None = None
        self._owner_salt: bytes | None = None

    def store(self) -> JobStore:
        if self._store is None:
            self._store = JobStore.from_config(self.jobs_config)
        return self._store

    def metrics(self) -> Metrics:
        if self._metrics is None:
            self._metrics = Metrics()
        return self._metrics

    def owner_salt(self) -> bytes:
        if self._owner_salt is None:
            import redis

            j = self.jobs_config
            try:
                self._owner_salt = deployment_salt(j.redis_url, f"{j.prefix}:owner-salt")
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise JobStoreUnavailable(f"the job store (Redis) is unavailable: {type(exc).__name__}") from None
        return self._owner_salt

    def own_job(self, job_id: str, who: str) -> JobRecord:
        record = self.store().get(job_id) if len(job_id) <= 64 else None
        if record is None or record.owner != who:  # another token's job does not exist for you
            raise HTTPException(404, f"no job {job_id[:64]!r}")
        return record

    def examples(self, record: JobRecord, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        try:
            total, page = read_examples(RunLayout(record.run_dir).curated, offset, limit)
        except HTTPException as exc:  # a damaged store's message names its files
            raise HTTPException(exc.status_code, self.paths.text(str(exc.detail))) from None
        return total, [self.paths.example(row) for row in page]


def context(request: Request) -> ApiContext:
    return request.app.state.api


def owner(request: Request, authorization: str | None = Header(None, description="Bearer <token>")) -> str:
    """The caller's owner id (what job records keep). BearerAuth already refused a bad token;
    checked again so that a route never runs without one."""
    ctx = context(request)
    error = bearer_error(authorization, ctx.api)
    if error is not None:
        raise HTTPException(401, error, headers={"WWW-Authenticate": "Bearer"})
    return owner_id(bearer_token(authorization or ""), ctx.owner_salt())


def ui_owner(request: Request) -> str:
    """The owner behind a bearer token or a browser session (services.ui_routes.UiAuth.owner)."""
    return context(request).ui.owner(request)


Ctx = Annotated[ApiContext, Depends(context)]
Owner = Annotated[str, Depends(owner)]
UiOwner = Annotated[str, Depends(ui_owner)]


def job_run_dir(job_id: str, request: Request, who: UiOwner) -> Path:
    """The inspector's run directory of a job (another token's job: 404, as in the job API)."""
    return Path(context(request).own_job(job_id, who).run_dir)
