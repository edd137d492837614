"""The curation API's operations routes: the older liveness route and Prometheus metrics.
(/livez and /readyz are services.health's middleware, outside every other check.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Request, Response

from services.api_context import Owner, context
from services.auth import bearer_error
from services.jobs import JobStoreUnavailable

router = APIRouter(tags=["ops"])


# The older liveness route, kept for the clients that use it: probes use /livez and /readyz.
@router.get("/healthz")
def healthz(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
    ctx = context(request)
    if bearer_error(authorization, ctx.api) is not None:  # a stranger learns only that this answers
        return {"status": "ok"}
    try:
        redis_ok = ctx.store().ping()
    except JobStoreUnavailable:
        redis_ok = False
    return {"status": "ok", "redis": "ok" if redis_ok else "unavailable"}


@router.get("/metrics", response_class=Response)
def prometheus(request: Request, _: Owner) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(context(request).metrics().registry), media_type=CONTENT_TYPE_LATEST)
