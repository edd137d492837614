"""`ssb inspect`: a local web app over a run directory (services/inspector/routes.py has the pages).

    app = create_app("runs/default")                      # the pages at /
    router = build_inspector_router(resolve)             # or mounted anywhere, e.g. under a job:
    app.include_router(router, prefix="/ui/jobs/{job_id}")   # resolve(job_id, ...) -> Path
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.inspector.routes import build_inspector_router

__all__ = ["build_inspector_router", "create_app"]


def create_app(run_dir: str | Path) -> FastAPI:
    root = Path(run_dir).resolve()

    def resolve() -> Path:
        return root

    app = FastAPI(title="ssb inspect", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_inspector_router(resolve))
    return app
